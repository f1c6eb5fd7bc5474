"""The "xnnpack" backend: Debian trixie's onnxruntime 1.21 (with XNNPACK), unpacked, run through its
own ld-linux out of process. Fixed shapes only.

Needs `edgetx provision xnnpack` (`make provision-xnnpack`). Unavailable: skipped with the reason, or failed where required.
"""

from __future__ import annotations

import pytest

from conftest import backend_or_skip
from edgetx.bundle import Bundle
from edgetx.errors import BackendError
from edgetx.verify.fixed import FIXED_CHECK
from edgetx.verify.report import to_markdown
from edgetx.verify.parity import verify
from edgetx.runtimes import SessionOptions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def backend():
    return backend_or_skip("xnnpack")


def test_fixed_fp32_and_int4_agree_with_ort_cpu(backend, tiny_bundle):
    from edgetx.build.convert import add_fixed

    bundle = Bundle.load(tiny_bundle)
    add_fixed(bundle, {"batch": 1, "seq": 1, "past": 15}, ["fp32", "int4"])
    reports = verify(Bundle.load(tiny_bundle), backend="xnnpack", variants=["fp32", "int4"])
    assert all(r.passed for r in reports), to_markdown(reports)
    assert all(r.checks[0].name == FIXED_CHECK for r in reports)
    fp32 = reports[0].placement
    assert fp32["provider"] == "XnnpackExecutionProvider" and 0 < fp32["on_backend"] < fp32["nodes"], fp32


def test_runtime_is_debians(backend):
    assert "onnxruntime 1.21" in backend.availability().reason


def test_broken_model_is_a_backend_error(backend, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="broken.onnx"):
        backend.create_session(broken, SessionOptions())


def test_unprovisioned_root_says_how(tmp_path, monkeypatch):
    from edgetx.runtimes.xnnpack import XnnpackBackend

    monkeypatch.setenv("EDGETX_XNNPACK_ROOT", str(tmp_path))
    status = XnnpackBackend().availability()
    assert not status.available and "edgetx provision xnnpack" in status.reason
