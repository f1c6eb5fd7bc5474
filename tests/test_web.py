"""The web backend (onnxruntime-web wasm in Node) and the JS runtime in runtimes/web/.

Needs Node.js >= 18 and `edgetx provision web`. A missing backend skips these
with the reason, or fails them where it is required (`make test`, CI).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import backend_or_skip
from edgetx.bundle import Bundle
from edgetx.errors import BackendError
from edgetx.verify.report import to_markdown
from edgetx.verify.parity import verify
from edgetx.runtimes import GenerationConfig, Generator, Session, SessionOptions, get_backend
from edgetx.runtimes import web as web_backend
from edgetx.kinds.decoding import causal_feeds

pytestmark = pytest.mark.slow

PROMPT = "def parse(line):\n    "


@pytest.fixture(scope="session")  # set up before the bundles it guards, so a skip costs no build
def web() -> web_backend.WebBackend:
    """The web backend, available (else skip, or fail when required: CI, `make test`)."""
    return backend_or_skip("web")


def js_generate(bundle: Path, prompt: str, max_tokens: int, variant: str = "fp32",
                *extra: str) -> subprocess.CompletedProcess:
    """Run runtimes/web/generate.mjs --json on a bundle."""
    argv = [web_backend.node_executable(), str(web_backend.GENERATE), str(bundle), "--prompt", prompt,
            "--max-tokens", str(max_tokens), "--variant", variant, "--json", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=web_backend.worker_env())


def test_every_variant_verifies_on_web(web, tiny_bundle_master):
    bundle = Bundle.load(tiny_bundle_master)
    reports = verify(bundle, backend="web")
    assert [r.variant for r in reports] == list(bundle.variants)
    assert all(r.passed for r in reports), to_markdown(reports)


def test_js_greedy_equals_python_generator(web, tiny_bundle_master):
    bundle = Bundle.load(tiny_bundle_master)
    for variant in bundle.variants:
        result = js_generate(tiny_bundle_master, PROMPT, 40, variant)
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)
        generator = Generator(Session(bundle, variant=variant, backend="ort-cpu"))
        config = GenerationConfig(max_new_tokens=40, temperature=0.0)
        want = list(generator.tokens(list(PROMPT.encode()), config))
        assert got["tokens"] == want, f"{variant}: JS greedy tokens differ from the Python Generator's"
        assert got["text"] == generator.generate(PROMPT, config), variant
        assert got["finish_reason"] == "length" and got["prompt_tokens"] == len(PROMPT.encode())
        assert len(got["step_ms"]) == 40 and got["ms_per_token"] > 0


@pytest.fixture(scope="module")
def reference_fp32(web, tmp_path_factory) -> Path:
    """The trained reference model as an fp32-only bundle (a random tiny model only repeats a byte)."""
    from edgetx.build import build

    return build(None, tmp_path_factory.mktemp("web-ref") / "edgetx-gpt", optimize=False, quantize=()).path


CODE_PROMPT = "def read_config(path):\n    \"\"\"Load a JSON config file.\"\"\"\n    with open(path) as f:\n"


def test_js_greedy_bytes_equal_python_on_the_reference_model(reference_fp32):
    result = js_generate(reference_fp32, CODE_PROMPT, 64)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    generator = Generator(Session(reference_fp32))
    want = list(generator.tokens(list(CODE_PROMPT.encode()), GenerationConfig(max_new_tokens=64)))
    assert len(set(want)) > 5, "the reference model should write varied text"
    assert bytes(got["tokens"]) == bytes(want)


def test_js_stop_sequence_matches_python(reference_fp32):
    first = json.loads(js_generate(reference_fp32, CODE_PROMPT, 40).stdout)
    text = bytes(first["tokens"]).decode("utf-8", "replace")
    stop = next(w for w in text.split() if len(w) >= 3 and w.isascii() and w.isalpha() and text.index(w) > 5)
    got = json.loads(js_generate(reference_fp32, CODE_PROMPT, 40, "fp32", "--stop", stop).stdout)
    generator = Generator(Session(reference_fp32))
    want = generator.generate(CODE_PROMPT, GenerationConfig(max_new_tokens=40, stop=(stop.encode(),)))
    assert got["finish_reason"] == generator.finish_reason == "stop"
    assert got["text"] == want == text[: text.index(stop)]


def test_tampered_variant_fails_with_sha256_message(web, tiny_bundle):
    model = tiny_bundle / Bundle.load(tiny_bundle).variant("fp32").file
    with open(model, "ab") as f:
        f.write(b"\0")
    result = js_generate(tiny_bundle, PROMPT, 4)
    assert result.returncode == 1
    assert "does not match the sha256 in manifest.json" in result.stderr
    assert str(model) in result.stderr and "rebuild or re-copy the bundle" in result.stderr


def test_worker_reports_errors_and_keeps_serving(web, tiny_bundle_master):
    bundle = Bundle.load(tiny_bundle_master)
    session = web.create_session(bundle.file(bundle.variant("fp32").file), SessionOptions(threads=1))
    try:
        with pytest.raises(BackendError, match="web .*failed on"):
            session.run({"input_ids": np.zeros((1, 3), np.int64)})
        feeds = causal_feeds(bundle.io["inputs"], np.array([list(b"abc")], np.int64))
        result = session.run(feeds, ["logits"])
        assert result.outputs["logits"].shape == (1, 3, bundle.model["vocab_size"]) and result.seconds > 0
        assert session.runtime.startswith("onnxruntime-web 1.30.0")
    finally:
        session.close()
    assert session._process.poll() == 0


def test_unprovisioned_root_gives_an_actionable_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETX_WEB_ROOT", str(tmp_path))
    status = web_backend.WebBackend().availability()
    assert not status.available
    assert "edgetx provision web" in status.reason
    if web_backend.node_executable():
        assert str(tmp_path) in status.reason
    with pytest.raises(BackendError, match="edgetx provision web"):
        get_backend("web")


def test_ort_files_verify_on_web(web, tiny_bundle):
    from edgetx.build.convert import to_ort

    to_ort(Bundle.load(tiny_bundle))
    reports = verify(Bundle.load(tiny_bundle), backend="web-ort")
    assert len(reports) == 3 and all(r.passed for r in reports), to_markdown(reports)


def test_js_checks_the_manifest_schema_and_reads_v1_bundles(web, tmp_path):
    """The JS runtime validates manifests against the same published schema (and migrates version 1)."""
    import shutil

    v1 = Path(__file__).parent / "data" / "v1-tiny-gpt"
    result = js_generate(v1, PROMPT, 6)
    assert result.returncode == 0, result.stderr
    want = list(Generator(Session(v1)).tokens(list(PROMPT.encode()), GenerationConfig(max_new_tokens=6)))
    assert json.loads(result.stdout)["tokens"] == want
    broken = tmp_path / "broken"
    shutil.copytree(v1, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["model"]["vocab_size"] = -4
    (broken / "manifest.json").write_text(json.dumps(manifest))
    result = js_generate(broken, PROMPT, 2)
    assert result.returncode == 1 and "model.vocab_size must be a positive integer, got -4" in result.stderr
