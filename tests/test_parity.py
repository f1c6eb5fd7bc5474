"""Parity catches a wrong graph, and the reports say which check failed."""

import json

import numpy as np
import onnx
from onnx import numpy_helper

from edgetx.bundle import Bundle, sha256_file
from edgetx.verify.parity import verify


def test_tiny_bundle_passes_all_checks(tiny_bundle_master):
    report = verify(Bundle.load(tiny_bundle_master), variants=["fp32"])[0]
    assert report.passed
    assert [c.name for c in report.checks] == ["prefill", "greedy decode", "cache == recompute", "padded batch",
                                              "rows alone"]
    assert report.max_abs < 1e-4
    padding = Bundle.load(tiny_bundle_master).model["padding"]  # measured in PyTorch at export
    assert padding["invariant"] and padding["max_abs"] < 1e-4


def _perturb_weights(tiny_bundle) -> None:
    """Add noise to the largest weight and re-sign the manifest: a consistently wrong bundle."""
    path = tiny_bundle / "fp32/model.onnx"
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    array = numpy_helper.to_array(weight).copy()
    array += 0.2 * array.std() * np.random.default_rng(0).standard_normal(array.shape).astype(array.dtype)
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(path))
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    digest = sha256_file(path)  # a consistently re-signed bad model: only parity can catch it
    manifest["files"]["fp32/model.onnx"]["sha256"] = manifest["variants"]["fp32"]["sha256"] = digest
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))


def test_perturbed_weights_fail_parity(tiny_bundle):
    _perturb_weights(tiny_bundle)
    report = verify(Bundle.load(tiny_bundle), variants=["fp32"])[0]
    assert not report.passed
    failed = {c.name for c in report.checks if not c.passed}
    assert "prefill" in failed
    assert report.max_abs > 1e-3


def test_a_graph_off_by_more_than_rounding_gets_no_budget(tiny_bundle):
    """The fp32 budget is 10x the measured PyTorch-onnxruntime spread; a spread that is not rounding (over 1e-3 of
    the outputs' scale on every configuration) is refused, not turned into a budget that fits the error."""
    import pytest

    from edgetx.verify.parity import ExportMismatch, measure_fp32_tolerance

    assert measure_fp32_tolerance(Bundle.load(tiny_bundle)).max_abs < 1e-3  # the correct graph: a rounding budget
    _perturb_weights(tiny_bundle)
    with pytest.raises(ExportMismatch, match="not rounding"):
        measure_fp32_tolerance(Bundle.load(tiny_bundle))
