"""The "openvino" backend: onnxruntime-openvino in its own venv, out of process, on this CPU.

Needs `edgetx provision openvino` (`make provision-openvino`). Unavailable: skipped with the reason, or failed where required.
"""

from __future__ import annotations

import pytest

from conftest import backend_or_skip
from edgetx.bundle import Bundle
from edgetx.errors import BackendError
from edgetx.verify.report import to_markdown
from edgetx.verify.parity import verify, verify_matrix
from edgetx.runtimes import SessionOptions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def backend():
    return backend_or_skip("openvino")


@pytest.fixture(scope="session")
def unfused_bundle(backend, tiny_checkpoint, tmp_path_factory):
    """The tiny GPT exported without onnxruntime's CPU fusions (OpenVINO's reader rejects some of them)."""
    from edgetx.build import build

    out = tmp_path_factory.mktemp("openvino") / "tiny-unfused"
    build(tiny_checkpoint, out, optimize=False, quantize=("int4",))
    return out


def test_unfused_variants_verify_against_golden_with_placement(unfused_bundle):
    reports = verify(Bundle.load(unfused_bundle), backend="openvino")
    assert [r.variant for r in reports] == ["fp32", "int4"]
    assert all(r.passed for r in reports), to_markdown(reports)
    fp32 = reports[0]
    assert {c.name for c in fp32.checks} >= {"prefill", "greedy decode", "padded batch"}
    assert fp32.placement["provider"] == "OpenVINOExecutionProvider"
    assert fp32.placement["on_backend"] == fp32.placement["nodes"], fp32.placement


def test_fused_graph_is_a_failed_row_not_a_crash(backend, tiny_bundle_master):
    """The default bundle's fused graph: whatever OpenVINO makes of it, the matrix gets a row per variant."""
    bundle = Bundle.load(tiny_bundle_master)
    reports = verify_matrix(bundle, ["openvino"])
    assert [r.variant for r in reports] == list(bundle.variants)
    for r in reports:
        assert r.passed or r.checks[0].name == "load and run", to_markdown(reports)


def test_broken_model_is_a_backend_error(backend, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="broken.onnx"):
        backend.create_session(broken, SessionOptions())


def test_unprovisioned_root_says_how(tmp_path, monkeypatch):
    from edgetx.runtimes.openvino import OpenVinoBackend

    monkeypatch.setenv("EDGETX_OPENVINO_ROOT", str(tmp_path))
    status = OpenVinoBackend().availability()
    assert not status.available and "edgetx provision openvino" in status.reason


def test_whole_matrix_reports_unloadable_graphs_as_not_runnable(backend, tiny_bundle_master):
    """verify --all (no backend named): a fused graph OpenVINO cannot read is skipped with its reason,
    not counted as a wrong answer; named, the same graph is a failed row (above)."""
    from edgetx.verify.parity import available_backends

    assert "openvino" in available_backends()
    reports = [r for r in verify_matrix(Bundle.load(tiny_bundle_master)) if r.backend == "openvino"]
    assert reports and all(r.passed or r.skipped.startswith("openvino cannot run") for r in reports)
