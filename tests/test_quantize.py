"""Quantized variants: gated, with mixed precision when a scheme misses, and clear errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.errors import InputError
from edgetx.gates import calibration_feeds
from edgetx.quantize import SCHEMES, apply, small_constant_matmuls, weight_matmuls


def _bundle_data(path):
    bundle = Bundle.load(path)
    return bundle, dict(np.load(bundle.file("quant.npz"))), bundle.io["inputs"]


def test_build_writes_gated_int8_and_int4(tiny_bundle_master):
    bundle = Bundle.load(tiny_bundle_master)
    assert {"fp32", "int8-weight-only", "int4"} <= set(bundle.variants)
    results = bundle.manifest["quantization"]["results"]
    for name in ("int8-weight-only", "int4"):
        assert results[name]["gate_passed"] and not results[name]["missed_by"]
        assert results[name]["bytes"] < bundle.manifest["variants"]["fp32"]["bytes"]
        assert bundle.variant(name).parity["passed"]
        assert {"kld_mean", "top1", "bits_per_token", "greedy_agreement"} <= set(results[name]["gate"])
    assert "quant.npz" in bundle.manifest["files"]


def test_rotary_frequency_matmul_is_never_quantized(tiny_bundle_master):
    fp32 = Bundle.load(tiny_bundle_master).file("fp32/model.onnx")
    small = small_constant_matmuls(fp32)
    assert small and not set(small) & set(weight_matmuls(fp32))


def test_static_quantization_needs_calibration(tiny_bundle_master, tmp_path):
    bundle, data, inputs = _bundle_data(tiny_bundle_master)
    fp32 = bundle.file("fp32/model.onnx")
    static = SCHEMES["int8-static-minmax"]
    with pytest.raises(InputError, match="needs calibration data and none was given"):
        apply(static, fp32, tmp_path / "s.onnx", calibration=[], inputs=inputs)
    wrong = calibration_feeds("causal-lm", inputs, data)
    wrong[0]["input_ids"] = wrong[0]["input_ids"].astype(np.int32)
    with pytest.raises(InputError, match="calibration sample 0: input 'input_ids': expected dtype int64"):
        apply(static, fp32, tmp_path / "s.onnx", calibration=wrong, inputs=inputs)
    apply(static, fp32, tmp_path / "s.onnx", calibration=calibration_feeds("causal-lm", inputs, data), inputs=inputs)
    assert (tmp_path / "s.onnx").stat().st_size < fp32.stat().st_size


def test_quantize_cli(tiny_bundle_master, tmp_path):
    src = tiny_bundle_master / "fp32/model.onnx"
    result = CliRunner().invoke(main, ["quantize", str(src), "--scheme", "int4", "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 0 and (tmp_path / "q.onnx").is_file()
    result = CliRunner().invoke(main, ["quantize", str(src), "--scheme", "int3", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "unknown quantization scheme 'int3'" in result.stderr
    result = CliRunner().invoke(main, ["quantize", str(src), "--scheme", "int8-static-minmax", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "needs calibration data" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_build_rejects_unknown_scheme_before_exporting(tmp_path):
    result = CliRunner().invoke(main, ["build", "--out", str(tmp_path / "b"), "--quantize", "int8,int3"])
    assert result.exit_code == 1 and "unknown quantization scheme 'int3'" in result.stderr


def test_inspect_shows_the_quantization_report(tiny_bundle_master):
    result = CliRunner().invoke(main, ["inspect", str(tiny_bundle_master)])
    assert "quantized variants" in result.stderr and "int4" in result.stderr
    info = json.loads(CliRunner().invoke(main, ["inspect", str(tiny_bundle_master), "--json"]).stdout)
    assert set(info["quantization"]["results"]) == {"int8-weight-only", "int4", "int4-grid"}


def test_static_and_fp16_schemes_through_build(tiny_checkpoint, tmp_path):
    from edgetx.build import build

    bundle = build(tiny_checkpoint, tmp_path / "b", optimize=False, quantize=("int8-static-entropy", "fp16"))
    results = bundle.manifest["quantization"]["results"]
    assert results["int8-static-entropy"]["scheme"]["method"] == "static"
    for name in ("int8-static-entropy", "fp16"):
        assert results[name]["gate_passed"], results[name]["missed_by"]
        assert name in bundle.variants and bundle.variant(name).parity["passed"]
    assert bundle.variant("fp16").precision == "fp16"


def _snap_to_q4_1_grid(src, dst):
    """A copy of `src` whose weight matrices sit on a GGUF Q4_1-style grid: per block of 32 inputs,
    low + step * q with q in 0..15 (levels 0 and 15 not always used)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for i, tensor in enumerate(model.graph.initializer):
        w = numpy_helper.to_array(tensor)
        if w.ndim != 2 or w.size < 4096 or w.shape[0] % 32:
            continue
        blocks = w.T.reshape(w.shape[1], -1, 32)
        low, high = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
        step = (high - low) / 15
        q = np.clip(np.rint((blocks - low) / step), 1, 14)  # like a real file, the extremes may go unused
        snapped = (low + step * q).astype(np.float32).reshape(w.shape[1], -1).T
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(snapped), tensor.name))
    onnx.save(model, str(dst))


def test_int4_grid_is_exact_on_grid_weights(tiny_bundle_master, tmp_path):
    from edgetx.bundle import Bundle
    from edgetx.grid_int4 import apply_grid
    from edgetx.parity import golden_feeds
    from edgetx.quantize import NotApplicable, SCHEMES, apply
    from edgetx.runtimes import SessionOptions, get_backend
    from edgetx.runtimes.session import Session

    bundle = Bundle.load(tiny_bundle_master)
    fp32 = bundle.file("fp32/model.onnx")
    with pytest.raises(NotApplicable, match="no weight MatMul .* sits on a 4-bit block grid"):
        apply(SCHEMES["int4-grid"], fp32, tmp_path / "float.onnx")  # float-trained weights: nothing to do
    snapped, exact = tmp_path / "snapped.onnx", tmp_path / "int4.onnx"
    _snap_to_q4_1_grid(fp32, snapped)
    assert apply_grid(snapped, exact) == len(weight_matmuls(snapped))  # every snapped weight MatMul
    feeds = golden_feeds(Session(bundle), bundle.golden())
    cpu = get_backend("ort-cpu")
    want = cpu.create_session(snapped, SessionOptions()).run(feeds, ["logits"]).outputs["logits"]
    got = cpu.create_session(exact, SessionOptions()).run(feeds, ["logits"]).outputs["logits"]
    assert np.abs(want - got).max() < 1e-4 * np.abs(want).max()  # exact up to fp32 summation order
    assert exact.stat().st_size < snapped.stat().st_size  # (embeddings and norms stay fp32 in this tiny model)


def test_build_records_int4_grid_as_not_applicable(tiny_bundle_master):
    from edgetx.bundle import Bundle

    results = Bundle.load(tiny_bundle_master).manifest["quantization"]["results"]
    assert "4-bit block grid" in results["int4-grid"]["not_applicable"]
    assert "int4-grid" not in Bundle.load(tiny_bundle_master).variants
