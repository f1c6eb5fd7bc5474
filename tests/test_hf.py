"""Hugging Face families on tiny random-init models saved here: Llama, Qwen2, Mistral, GPT-2, BERT."""

import json

import numpy as np
import pytest
import torch

from hf_models import save_tiny
from edgetx.build import build
from edgetx.errors import EdgetxError
from edgetx.runtimes import GenerationConfig, Generator, Session

DECODERS = ["llama", "qwen2", "mistral", "gpt2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """family -> (model folder, bundle), built once per test module: the fused candidate and one gated
    variant (the full default recipe runs on the reference GPT and in the coverage sweep)."""
    cache = {}

    def get(family):
        if family not in cache:
            root = tmp_path_factory.mktemp(family)
            folder = save_tiny(family, root / "model")
            cache[family] = (folder, build(folder, root / "bundle", candidates=("unfused", "ort-fusions"),
                                           quantize=("int8-weight-only",)))
        return cache[family]

    return get


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_bundle_passes_parity(built, family):
    folder, bundle = built(family)
    parity = bundle.variant("fp32").parity
    assert parity["passed"], parity
    assert {c["name"] for c in parity["checks"]} >= {"prefill", "greedy decode", "cache == recompute", "padded batch"}
    assert bundle.model["architecture"].endswith(("ForCausalLM", "LMHeadModel"))
    assert "tokenizer/tokenizer.json" in bundle.manifest["files"]
    assert bundle.manifest["tokenizer"]["eos_token_ids"] == [0]


@pytest.mark.parametrize("family", DECODERS)
@torch.no_grad()
def test_decoder_greedy_text_matches_transformers(built, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, bundle = built(family)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = "Return the index where to insert item x in list a"
    ids = tokenizer(prompt, return_tensors="pt")
    want = model.generate(**ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    want_text = tokenizer.decode(want[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    generator = Generator(Session(bundle.path))
    got_ids = list(generator.tokens(generator.tokenizer.encode(prompt), GenerationConfig(max_new_tokens=20)))
    assert got_ids == want[0, ids["input_ids"].shape[1]:].tolist()[: len(got_ids)]
    if generator.finish_reason == "length":
        assert generator.generate(prompt, GenerationConfig(max_new_tokens=20)) == want_text


def test_mistral_sliding_window_is_in_the_graph_not_a_context_cap(built):
    import onnx_ir as ir

    from edgetx.passes.gqa_padding import ATTENTION_WINDOWS_KEY

    _, bundle = built("mistral")
    assert bundle.model["max_positions"] == 256  # the window (4096) no longer caps the context
    graph = ir.load(bundle.file(bundle.variant("fp32").file))
    assert json.loads(graph.metadata_props[ATTENTION_WINDOWS_KEY]) == [4096, 4096]


def test_runtime_tokenizer_matches_transformers(built):
    from transformers import AutoTokenizer

    folder, bundle = built("llama")
    reference = AutoTokenizer.from_pretrained(folder)
    ours = Session(bundle.path).tokenizer
    for text in ["def main():\n    return 0", "Héllo wörld → ok", ""]:
        assert ours.encode(text) == reference(text)["input_ids"]
        assert ours.decode(ours.encode(text)) == reference.decode(reference(text)["input_ids"], skip_special_tokens=True)


def test_encoder_embeddings_match_pytorch_pooling(built):
    from transformers import AutoModel, AutoTokenizer

    folder, bundle = built("bert")
    assert bundle.variant("fp32").parity["passed"]
    assert bundle.model["pooling"] == {"mode": "mean", "normalize": True, "from": "modules.json"}
    sentences = [f"Sentence number {i} says something about sorted lists." for i in range(5)] + ["short"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    got = Session(bundle.path).embed(sentences, batch_size=4)
    cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert got.shape == want.shape and cosine.min() >= 0.99999


def test_embed_cli_json_and_npy(built, tmp_path):
    from click.testing import CliRunner

    from edgetx.cli import main

    _, bundle = built("bert")
    result = CliRunner().invoke(main, ["embed", str(bundle.path), "one sentence", "another one"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["text"] for r in rows] == ["one sentence", "another one"] and len(rows[0]["embedding"]) == 64
    out = tmp_path / "v.npy"
    result = CliRunner().invoke(main, ["embed", str(bundle.path), "x", "--npy", str(out)])
    assert result.exit_code == 0 and np.load(out).shape == (1, 64)
    result = CliRunner().invoke(main, ["embed", str(built("llama")[1].path), "x"])
    assert result.exit_code == 1 and "embed needs an encoder" in result.stderr


def test_chat_template_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    from edgetx.runtimes.tokenizer import apply_chat_template

    folder = save_tiny("llama", tmp_path / "m")
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = template
    messages = [{"role": "user", "content": "Hi there"}]
    want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    spec = {"chat_template": template, "eos_token": tokenizer.eos_token, "bos_token": tokenizer.bos_token}
    assert apply_chat_template(spec, messages) == want


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    import transformers as tf

    from hf_models import byte_level_tokenizer, tiny_config

    folder = tmp_path / "pickled"
    model = tf.AutoModelForCausalLM.from_config(tiny_config("gpt2"))
    model.config.architectures = ["GPT2LMHeadModel"]
    model.save_pretrained(folder)
    for weights in folder.glob("*.safetensors"):  # transformers 5 writes safetensors only: make the pickle here
        weights.unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    byte_level_tokenizer().save_pretrained(folder)
    with pytest.raises(EdgetxError, match="--allow-pickle"):
        build(folder, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    bundle = build(folder, tmp_path / "b", allow_pickle=True, optimize=False, quantize=())
    assert bundle.variant("fp32").parity["passed"]


def test_remote_code_is_refused(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "edgetx-custom",
                                                    "auto_map": {"AutoConfig": "modeling.CustomConfig"}}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(EdgetxError, match="--trust-remote-code"):
        build(folder, tmp_path / "b")


def test_an_encoder_decoder_of_another_kind_is_named_as_unsupported(tmp_path):
    import transformers as tf

    folder = tmp_path / "captioner"  # image in, text out: not in transformers' text-to-text (seq2seq LM) registry
    config = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(tf.ViTConfig(), tf.GPT2Config())
    config.architectures = ["VisionEncoderDecoderModel"]
    config.save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(EdgetxError, match=r"VisionEncoderDecoderModel \(model_type 'vision-encoder-decoder'\) is an "
                                          r"encoder-decoder model of a kind edgetx does not export yet"):
        build(folder, tmp_path / "b")


def test_export_failure_names_architecture_and_cause_and_keeps_the_trace(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import edgetx.exporters.source as source_module
    from edgetx.cli import main

    def broken_export(*args, **kwargs):
        try:
            raise ValueError("unsupported operator aten::frobnicate")
        except ValueError as e:
            raise RuntimeError("Failed to export the model with torch.export") from e

    monkeypatch.setattr(source_module, "export_causal_lm", broken_export)
    folder = save_tiny("llama", tmp_path / "m")
    result = CliRunner().invoke(main, ["build", str(folder), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1
    assert "could not export LlamaForCausalLM" in result.stderr
    assert "unsupported operator aten::frobnicate" in result.stderr
    assert "exporters/hf_decoder.py (ADJUSTMENTS)" in result.stderr  # what to try, from the exporter
    log = tmp_path / "b.export-error.log"
    assert log.is_file() and "Traceback" in log.read_text() and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_llama_fused_attention_is_right_for_padded_batches(built):
    """The fused GroupQueryAttention candidate passes every check, padded batches included: the
    gqa-padded-batches pass masks pads with attention_bias and rotates at the real positions."""
    _, bundle = built("llama")
    fused = next(c for c in bundle.manifest["optimization"]["candidates"] if c["name"] == "ort-fusions")
    moved = next(step for step in fused["log"] if step["pass"] == "gqa-padded-batches")
    assert moved["attention_nodes"] == bundle.model["num_layers"] and moved["modified"]
    assert fused["parity_passed"] and not fused["failed_checks"] and "restriction" not in fused


@pytest.mark.parametrize("family", DECODERS)
def test_prompt_can_ask_for_the_last_positions_logits_only(built, family):
    from edgetx.errors import InputError
    from edgetx.kinds.decoding import causal_feeds

    _, bundle = built(family)
    session = Session(bundle.path)
    assert {"name": "logits_to_keep", "dtype": "int64", "shape": [], "optional": True, "default": 0} in session.inputs
    ids = np.array([[5, 6, 7, 8, 9, 10]], dtype=np.int64)
    full = session.run(causal_feeds(session.inputs, ids))["logits"]  # not fed: every position
    last = session.run(causal_feeds(session.inputs, ids, logits_to_keep=1))["logits"]
    assert full.shape[1] == ids.shape[1] and last.shape == (1, 1, full.shape[-1])
    np.testing.assert_allclose(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    two = session.run(causal_feeds(session.inputs, ids, logits_to_keep=2))["logits"]
    np.testing.assert_allclose(two, full[:, -2:], atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="logits_to_keep"):
        session.run({**causal_feeds(session.inputs, ids), "logits_to_keep": np.array(-1, dtype=np.int64)})
