"""The "qnn" backend: the onnxruntime-qnn plugin EP on the Hexagon HTP simulator, out of process.

Needs `edgetx provision qnn` (`make provision-qnn`).
Unavailable: skipped with the reason, or failed where required (EDGETX_REQUIRE_BACKENDS, CI).
The HTP takes fixed shapes, so each test adds fixed-shape copies to its own bundle first.
"""

from __future__ import annotations

import pytest

from conftest import backend_or_skip
from edgetx.bundle import Bundle
from edgetx.errors import BackendError
from edgetx.verify.fixed import FIXED_CHECK
from edgetx.verify.report import to_markdown
from edgetx.verify.parity import verify, verify_matrix
from edgetx.runtimes import SessionOptions

pytestmark = pytest.mark.slow
DIMS = {"batch": 1, "seq": 1, "past": 15}


@pytest.fixture(scope="session")
def backend():
    return backend_or_skip("qnn")


@pytest.fixture(scope="session")
def qnn_bundle(backend, tiny_checkpoint, tmp_path_factory):
    """The tiny GPT built unfused with an A16W8 QDQ variant, plus fixed-shape copies of every variant."""
    from edgetx.build import build
    from edgetx.build.convert import add_fixed

    out = tmp_path_factory.mktemp("qnn") / "tiny-qdq"
    build(tiny_checkpoint, out, optimize=False, quantize=("qdq-a16w8",))
    bundle = Bundle.load(out)
    assert "qdq-a16w8" in bundle.variants, bundle.manifest["quantization"]["results"]["qdq-a16w8"]["missed_by"]
    add_fixed(bundle, DIMS)
    return out


def test_qdq_and_fp32_run_on_the_htp_with_placement(qnn_bundle):
    reports = verify(Bundle.load(qnn_bundle), backend="qnn")
    assert [r.variant for r in reports] == ["fp32", "qdq-a16w8"]
    for r in reports:
        assert [c.name for c in r.checks] == [FIXED_CHECK], to_markdown(reports)
        assert r.passed, to_markdown(reports)
        placement = r.placement
        assert placement["provider"] == "QNNExecutionProvider"
        # an unfused fixed-shape graph runs (almost) entirely on the HTP
        assert placement["on_backend"] >= 0.9 * placement["nodes"], placement
    assert "computes float graphs as fp16" in reports[0].checks[0].detail
    assert "nodes on QNN" in to_markdown(reports)


def test_variant_without_fixed_file_is_skipped_in_the_matrix(backend, tiny_bundle):
    reports = [r for r in verify_matrix(Bundle.load(tiny_bundle)) if r.backend == "qnn"]
    assert reports and all(r.skipped.startswith("no onnx-fixed file") for r in reports), reports


def test_preflight_reports_fallbacks_and_applies_fixed_shapes(backend, tiny_bundle):
    """The default (fused, dynamic) tiny bundle: contrib ops and dynamic shapes fall back, with remedies."""
    from edgetx.verify.preflight import preflight, to_markdown as preflight_markdown

    bundle = Bundle.load(tiny_bundle)
    (before,) = preflight(bundle, "qnn", ["fp32"])
    kinds = {p.kind for p in before.problems}
    assert "dynamic-shapes" in kinds and "ort-fusions" in kinds, preflight_markdown([before], "qnn")
    assert before.by_op and before.nodes == sum(c["total"] for c in before.by_op.values())
    (after,) = preflight(bundle, "qnn", ["fp32"], apply=True)
    assert after.shapes.startswith("fixed"), after
    assert any(p.kind == "dynamic-shapes" and p.applied for p in after.problems)
    assert after.on_backend > before.on_backend, preflight_markdown([before, after], "qnn")
    assert "onnx-fixed" in Bundle.load(tiny_bundle).variant("fp32").formats


def test_broken_model_is_a_backend_error(backend, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="broken.onnx"):
        backend.create_session(broken, SessionOptions())


def test_unprovisioned_root_says_how(tmp_path, monkeypatch):
    from edgetx.runtimes.qnn import QnnBackend

    monkeypatch.setenv("EDGETX_QNN_ROOT", str(tmp_path))
    status = QnnBackend().availability()
    assert not status.available and "edgetx provision qnn" in status.reason and str(tmp_path) in status.reason
