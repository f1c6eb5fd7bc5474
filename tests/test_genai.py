"""`edgetx convert --to genai`: a bundle's decoder variants run by onnxruntime-genai (the wheel from PyPI, in the venv
`edgetx provision genai` makes), with the same greedy tokens as edgetx's Generator, verified and benched there."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetx.build.genai import byte_level_alphabet, byte_tokenizer_json, plain_byte_level
from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.errors import BackendError, EdgetxError
from tests.conftest import backend_or_skip

APP = '''
import sys
import numpy as np
import onnxruntime_genai as og

model = og.Model(sys.argv[1])                      # a converted variant's folder
tokenizer = og.Tokenizer(model)
prepend = [int(i) for i in sys.argv[4].split(",") if i]  # the manifest's genai.<variant>.prepend_ids, if any
ids = np.array(prepend + list(tokenizer.encode(sys.argv[2])), dtype=np.int32)
params = og.GeneratorParams(model)
params.set_search_options(max_length=len(ids) + int(sys.argv[3]), do_sample=False)
generator = og.Generator(model, params)
generator.append_tokens(ids[None])
while not generator.is_done():
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)[len(ids):]), end="")
'''


def linked_copy(bundle: Path, target: Path) -> Path:
    """A copy of a bundle whose files are hard links (conversion replaces the manifest, never edits a file in place)."""
    shutil.copytree(bundle, target, copy_function=os.link)
    return target


def genai_python() -> str:
    from edgetx.runtimes import get_backend

    env, stamp = get_backend("genai").environment_dir()
    return str(env / stamp["python"])


def run_app(folder: Path, prompt: str, new_tokens: int, prepend: list[int] = ()) -> str:
    """What a genai app prints: genai's tokenizer and greedy loop, `new_tokens` at most after the prompt."""
    done = subprocess.run([genai_python(), "-c", APP, str(folder), prompt, str(new_tokens),
                           ",".join(map(str, prepend))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# --- the tokenizer genai reads (fast, no genai) -------------------------------------------------------------------

def test_byte_vocabulary_is_written_as_an_equivalent_byte_level_bpe():
    from tokenizers import Tokenizer

    alphabet = byte_level_alphabet()
    assert len(set(alphabet)) == 256 and alphabet[ord("A")] == "A"
    made = Tokenizer.from_str(json.dumps(byte_tokenizer_json()))
    for text in ("plain", "naïve — 東京 🙂\n\t", "\x00\x7f"):
        ids = made.encode(text).ids
        assert ids == list(text.encode("utf-8"))
        assert made.decode(ids) == text


def test_sentencepiece_steps_dropped_only_from_a_byte_level_decoder():
    level = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    gguf_like = {"decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"},
                                                              {"type": "Replace"}, level]},
                 "model": {"type": "BPE", "byte_fallback": True, "vocab": {"a": 0, "Ġb": 1}}}
    adjusted = plain_byte_level(gguf_like)
    assert adjusted["decoder"] == level and adjusted["model"]["byte_fallback"] is False
    assert gguf_like["model"]["byte_fallback"] is True  # the input is left as it was
    with_bytes = {**gguf_like, "model": {**gguf_like["model"], "vocab": {"<0x0A>": 0}}}
    assert plain_byte_level(with_bytes) is None  # byte-fallback tokens: the steps do something
    sentencepiece = {"decoder": {"type": "Sequence", "decoders": [{"type": "Replace"}, {"type": "Fuse"}]},
                     "model": {"type": "BPE", "vocab": {}}}
    assert plain_byte_level(sentencepiece) is None


# --- the reference GPT through genai ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted(reference_bundle, tmp_path_factory):
    backend_or_skip("genai")
    bundle = linked_copy(reference_bundle.path, tmp_path_factory.mktemp("genai") / "edgetx-gpt")
    result = CliRunner().invoke(main, ["convert", str(bundle), "--to", "genai"])
    assert result.exit_code == 0, result.output
    return Bundle.load(bundle), result.output


@pytest.mark.slow
def test_convert_records_checked_genai_folders(converted):
    bundle, output = converted
    assert "genai" in output and "pass" in output  # the parity matrix on genai
    for name, variant in bundle.variants.items():
        config = variant.formats["genai"]
        assert config == f"{name}/genai_config.json" and config in bundle.manifest.files  # hash-listed
        assert f"{name}/tokenizer.json" in bundle.manifest.files
        record = bundle.manifest["genai"][name]
        assert record["greedy_tokens"] == [24, 24] and "onnxruntime-genai 0.18" in record["checked_with"]
        written = json.loads(bundle.file(config).read_text())
        # the reference GPT's attention fuses to MultiHeadAttention: genai gets the GroupQueryAttention form beside it
        assert written["model"]["type"] == "decoder" and written["model"]["decoder"]["filename"] == "model.genai.onnx"
        assert written["search"]["past_present_share_buffer"] is True and record["past_present_share_buffer"]
        assert f"{name}/model.genai.onnx" in bundle.manifest.files and "passing 5 parity checks" in record["graph"]
        assert written["model"]["decoder"]["num_hidden_layers"] == bundle.model["num_layers"]


@pytest.mark.slow
def test_genai_loop_picks_the_generators_tokens_on_every_variant(converted):
    from edgetx.runtimes import GenerationConfig, Generator, Session

    bundle, _ = converted
    prompt = list(b"class Stack:\n    def __init__(self):\n")
    for name in bundle.variants:
        want = list(Generator(Session(bundle, variant=name)).tokens(prompt, GenerationConfig(max_new_tokens=48)))
        genai = Session(bundle, variant=name, backend="genai")
        try:
            got = genai.own_loop(np.array(prompt), 48).tokens
        finally:
            genai.close()
        assert got == want, name


@pytest.mark.slow
def test_a_genai_app_generates_the_same_text_as_edgetx(converted):
    from edgetx.runtimes import GenerationConfig, Generator, Session

    bundle, _ = converted
    prompt = "def add(a, b):\n"
    want = Generator(Session(bundle, variant="fp32")).generate(prompt, GenerationConfig(max_new_tokens=40))
    assert bundle.manifest["genai"]["fp32"]["tokenizer_agrees"]
    assert run_app(bundle.path / "fp32", prompt, 40) == want


@pytest.fixture(scope="module")
def c_app(tmp_path_factory) -> Path:
    """runtimes/genai/app.c built against the PyPI wheel's libonnxruntime-genai.so, with libonnxruntime.so.1 beside it
    (genai loads onnxruntime from its own folder, as an app ships the two)."""
    from edgetx.runtimes.genai import WORKER

    site = Path(genai_python()).parent.parent / "lib"
    genai_lib = next(site.glob("python*/site-packages/onnxruntime_genai/libonnxruntime-genai.so"))
    ort_lib = next(site.glob("python*/site-packages/onnxruntime/capi/libonnxruntime.so.1.*"))
    folder = tmp_path_factory.mktemp("c-app")
    (folder / "lib").mkdir()
    (folder / "lib" / genai_lib.name).symlink_to(genai_lib)
    (folder / "lib" / "libonnxruntime.so.1").symlink_to(ort_lib)
    done = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", str(WORKER.parent / "app.c"), "-o",
                           str(folder / "app"), f"-L{folder / 'lib'}", "-l:libonnxruntime-genai.so",
                           "-Wl,-rpath,$ORIGIN/lib"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return folder / "app"


@pytest.mark.slow
def test_a_c_app_on_genai_generates_the_same_text_as_edgetx(converted, c_app):
    from edgetx.runtimes import GenerationConfig, Generator, Session

    bundle, _ = converted
    prompt = "import os\n\ndef main():\n"
    for name in ("fp32", "int4"):
        want = Generator(Session(bundle, variant=name)).generate(prompt, GenerationConfig(max_new_tokens=48))
        done = subprocess.run([str(c_app), str(bundle.path / name), prompt, "48"], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout == want, name
    done = subprocess.run([str(c_app), str(bundle.path / "no-such-variant"), prompt, "4"], capture_output=True, text=True)
    assert done.returncode == 1 and "loading the model folder failed" in done.stderr


@pytest.mark.slow
def test_verify_and_bench_on_genai(converted):
    from edgetx.measure.bench import BenchConfig, bench
    from edgetx.verify.parity import verify

    bundle, _ = converted
    reports = verify(bundle, backend="genai")
    assert all(r.passed for r in reports), [r.to_dict() for r in reports]
    names = [c.name for c in reports[0].checks]
    assert names == ["prefill", "greedy decode", "own loop"]
    [result] = bench(bundle, ["int4"], backend="genai", threads=(1,), cfg=BenchConfig(prompt_tokens=32, new_tokens=16),
                     memory_bound=False)
    assert result["backend"] == "genai" and result["decode_tokens_per_s"] > 0
    assert len(result["decode_token_latency"]) and result["rss_of"] == "worker process" and result["peak_rss_mb"] > 0


@pytest.mark.slow
def test_genai_refuses_single_graph_runs_and_batches(converted):
    from edgetx.runtimes import Session

    bundle, _ = converted
    session = Session(bundle, variant="fp32", backend="genai")
    try:
        with pytest.raises(BackendError, match="runs token sequences through its own KV cache"):
            session.run({"input_ids": np.zeros((1, 3), np.int64)})
        with pytest.raises(BackendError, match="one row at a time"):
            session.bind_cache(16, batch=2)
    finally:
        session.close()


def test_convert_to_genai_says_what_is_wrong(tiny_bundle, tmp_path, monkeypatch):
    result = CliRunner().invoke(main, ["convert", str(tiny_bundle), "--to", "genai", "--variant", "int3"])
    assert result.exit_code != 0 and "no variant 'int3'" in result.output
    monkeypatch.setenv("EDGETX_HOME", str(tmp_path / "nothing-here"))
    before = (tiny_bundle / "manifest.json").read_bytes()
    result = CliRunner().invoke(main, ["convert", str(tiny_bundle), "--to", "genai"])
    assert result.exit_code != 0 and "edgetx provision genai" in result.output
    assert (tiny_bundle / "manifest.json").read_bytes() == before and not list(tiny_bundle.glob("*/genai_config.json"))


def test_genai_cells_of_other_kinds_say_genai_runs_decoders_only(tiny_bundle):
    from edgetx.runtimes import list_backends
    from edgetx.verify.parity import verify, verify_matrix

    if not list_backends()["genai"].availability().available:
        pytest.skip("genai is not provisioned")  # the message is the matrix's; genai itself does not run here
    bundle = Bundle.load(tiny_bundle)
    bundle.manifest["model"]["kind"] = "encoder"  # in memory only
    [report, *_] = verify_matrix(bundle, ["genai"])
    assert report.skipped == "genai runs causal-lm models only"
    with pytest.raises(BackendError, match="genai runs causal-lm models only; .* is an encoder"):
        verify(bundle, backend="genai")


def test_encoders_are_not_converted(tiny_bundle):
    from edgetx.build.genai import to_genai

    data = json.loads((tiny_bundle / "manifest.json").read_text())
    bundle = Bundle.load(tiny_bundle)
    bundle.manifest["model"]["kind"] = "encoder"  # in memory only: what the kind decides, not the files
    with pytest.raises(EdgetxError, match="runs decoder language models; this bundle is an encoder"):
        to_genai(bundle)
    assert json.loads((tiny_bundle / "manifest.json").read_text()) == data


@pytest.mark.slow
def test_multi_head_attention_as_group_query_attention(reference_bundle, tmp_path):
    """The reference GPT's fused MultiHeadAttention over Concat(past, new) becomes GroupQueryAttention writing the
    presents: every past is read by the attention only (one buffer can serve as past and present), and the graph gives
    the bundle's answers on every check, with the cache bound in one in-place buffer too."""
    import dataclasses

    from edgetx.kinds.decoding import decode_loop, shares_cache_buffer
    from edgetx.onnx_info import graph_skeleton
    from edgetx.passes.files import transform_file
    from edgetx.passes.mha_gqa import MhaAsGqa
    from edgetx.runtimes import Session
    from edgetx.verify.tolerances import tolerance_for

    bundle = Bundle.load(linked_copy(reference_bundle.path, tmp_path / "ref"))
    variant = bundle.variant("fp32")
    assert not shares_cache_buffer(graph_skeleton(bundle.file(variant.file)))
    [log] = transform_file(bundle.file(variant.file), bundle.path / "fp32" / "gqa.onnx", [MhaAsGqa()])
    assert log["attention_nodes"] == bundle.model["num_layers"] and log["past_batch_reads_moved"] >= 1
    assert "MultiHeadAttention" not in str(log["ops_after"]) and log["ops_after"]["com.microsoft.GroupQueryAttention"]
    assert shares_cache_buffer(graph_skeleton(bundle.path / "fp32" / "gqa.onnx"))
    session = Session(bundle, variant=dataclasses.replace(variant, file="fp32/gqa.onnx"))
    checks = session.kind.parity_checks(session, bundle.golden(), tolerance_for("fp32", variant.tolerance))
    assert [c.name for c in checks if c.passed] == [c.name for c in checks] and len(checks) == 5
    prompt = bundle.golden()["prefill.input_ids"]
    plain, bound = decode_loop(Session(bundle, variant="fp32"), bind=False), decode_loop(session, 64)
    assert bound.binding is not None and bound.binding.capacity  # the in-place buffer
    for loop in (plain, bound):
        loop.logits = [loop.prefill(prompt)["logits"][0, -1]]
        for _ in range(8):
            loop.logits.append(loop.step(int(loop.logits[-1].argmax()))["logits"][0, -1])
    assert np.abs(np.array(plain.logits) - np.array(bound.logits)).max() < 1e-4


def test_the_rewrite_says_why_it_does_not_apply(tiny_bundle):
    from edgetx.passes.base import ir
    from edgetx.passes.files import load
    from edgetx.passes.mha_gqa import MhaAsGqa

    model = load(tiny_bundle / "fp32" / "model.onnx")  # the tiny GPT's fused graph: two MultiHeadAttention nodes
    attention = [n for n in model.graph if n.op_type == "MultiHeadAttention"]
    attention[1].attributes["unidirectional"] = ir.AttrInt64("unidirectional", 1)
    result = MhaAsGqa().call(model)
    assert not result.modified and result.details["skipped"].startswith("1 of 2 MultiHeadAttention nodes do not match")
    assert "is unidirectional" in result.details["skipped"]  # and no node was rewritten: all or none
    assert [n.op_type for n in model.graph].count("MultiHeadAttention") == 2
    del attention[1].attributes["unidirectional"]
    assert MhaAsGqa().call(model).modified
    assert MhaAsGqa().call(model).details["skipped"] == "no fused MultiHeadAttention"
