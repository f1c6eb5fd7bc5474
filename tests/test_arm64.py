"""The "arm64" backend: the aarch64 onnxruntime wheel under QEMU user mode (NEON cpu), torch-free.

Needs `edgetx provision arm64` (`make provision-arm64`). A missing backend skips these with the reason, or fails them
where it is required (`make test`, CI). Emulation is 50-300x slower and each worker start costs
~3-5 s, so sessions are few and reused.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

import edgetx.runtimes.arm64 as arm64
from conftest import backend_or_skip
from edgetx.bundle import Bundle
from edgetx.errors import BackendError
from edgetx.verify.parity import golden_feeds, verify
from edgetx.verify.report import to_markdown
from edgetx.runtimes import GenerationConfig, Generator, Session, SessionOptions
from edgetx.verify.tolerances import tolerance_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")  # set up before the bundle it guards, so a skip costs no build
def backend() -> arm64.Arm64Backend:
    """The arm64 backend, available (else skip, or fail when required: CI, `make test`)."""
    return backend_or_skip("arm64")


def test_every_variant_verifies_on_arm64(backend, tiny_bundle_master):
    bundle = Bundle.load(tiny_bundle_master)
    reports = verify(bundle, backend="arm64")
    assert [r.variant for r in reports] == list(bundle.variants)
    assert all(r.backend == "arm64" for r in reports)
    assert all(r.passed for r in reports), to_markdown(reports)


def test_arm64_agrees_with_ort_cpu(backend, tiny_bundle_master):
    """Golden-prefill logits within the variant's tolerance of x86 onnxruntime; same greedy tokens."""
    bundle = Bundle.load(tiny_bundle_master)
    golden = bundle.golden()
    prompt = [int(t) for t in golden["prefill.input_ids"][0]]
    config = GenerationConfig(max_new_tokens=len(golden["decode.tokens"]), temperature=0.0)
    for name in bundle.variants:
        variant = bundle.variant(name)
        tolerance = tolerance_for(variant.precision, bundle.manifest["variants"][name].get("tolerance"))
        arm, x86 = Session(bundle, variant=name, backend="arm64"), Session(bundle, variant=name, backend="ort-cpu")
        want, got = x86.run(golden_feeds(x86, golden))["logits"], arm.run(golden_feeds(arm, golden))["logits"]
        ok, diff, detail = tolerance.compare_logits(want, got)
        assert ok, f"{name}: arm64 vs ort-cpu prefill logits differ by {diff:.2e} ({detail}; tolerance {tolerance})"
        assert np.array_equal(want.argmax(-1), got.argmax(-1)), f"{name}: prefill argmax differs (max diff {diff:.2e})"
        tokens = {label: list(Generator(session).tokens(prompt, config)) for label, session in (("arm64", arm), ("ort-cpu", x86))}
        assert tokens["arm64"] == tokens["ort-cpu"], f"{name}: greedy tokens differ: {tokens}"


def test_availability_reports_onnxruntime_version(backend):
    from importlib.metadata import version

    status = backend.availability()
    assert f"onnxruntime {version('onnxruntime')} (aarch64" in status.reason, status.reason
    assert "neoverse-n1" in status.reason or os.environ.get("EDGETX_ARM64_CPU"), status.reason


def test_unprovisioned_root_says_how_to_provision(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETX_ARM64_ROOT", str(tmp_path))
    status = arm64.Arm64Backend().availability()
    assert not status.available
    assert str(tmp_path) in status.reason, status.reason
    assert f"edgetx provision arm64 --root {tmp_path}" in status.reason, status.reason
    assert "make provision-arm64" in status.reason, status.reason
    with pytest.raises(BackendError, match="edgetx provision arm64"):
        arm64.Arm64Backend().create_session(tmp_path / "model.onnx", SessionOptions())


def _within(seconds: float, call):
    """call() in a thread; fail (rather than hang the suite) if it takes longer than `seconds`."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the test thread
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"no answer within {seconds} s: the worker hangs"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_broken_model_is_an_error_naming_the_file(backend, tiny_bundle_master, tmp_path):
    good = Path(tiny_bundle_master) / "fp32" / "model.onnx"
    broken = tmp_path / "truncated.onnx"
    broken.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(BackendError, match="truncated.onnx"):
        _within(120, lambda: backend.create_session(broken, SessionOptions()))
    with pytest.raises(BackendError, match="does not exist"):
        backend.create_session(tmp_path / "missing.onnx", SessionOptions())


def test_unknown_cpu_model_reports_qemu_error(backend, tiny_bundle_master):
    model = Path(tiny_bundle_master) / "fp32" / "model.onnx"
    options = SessionOptions(extra={arm64.CPU_OPTION: "no-such-cpu"})
    with pytest.raises(BackendError, match="no-such-cpu"):
        _within(60, lambda: backend.create_session(model, options))


def test_ort_file_verifies_on_arm64(backend, tiny_bundle):
    from edgetx.build.convert import to_ort

    to_ort(Bundle.load(tiny_bundle), ["int4"])
    (report,) = verify(Bundle.load(tiny_bundle), backend="arm64-ort", variants=["int4"])
    assert report.passed, to_markdown([report])
