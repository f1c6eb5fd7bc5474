"""Applying a quantization scheme: an fp32 ONNX file (+ calibration data) in, a smaller one out. All of
it is onnxruntime.quantization underneath (paths in and out: the one stage that needs files); the schemes
and what each does are in edgetx.quant.schemes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgetx.errors import EdgetxError, InputError
from edgetx.passes.files import EXTERNAL_DATA_BYTES, file_bytes, move, save_proto
from edgetx.quant.outliers import OUTLIER_SUFFIX
from edgetx.quant.schemes import NotApplicable, Scheme, needs_calibration, scheme


MIN_WEIGHT_ELEMENTS = 4096  # smaller constant operands are not weight matrices worth quantizing


def _constant_matmuls(model_path: str | Path) -> list[tuple[str, int]]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    sizes = {i.name: int(np.prod(i.dims)) for i in model.graph.initializer}
    return [(n.name, max(sizes[i] for i in n.input if i in sizes)) for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and any(i in sizes for i in n.input)]


def weight_matmuls(model_path: str | Path) -> list[str]:
    """MatMul/Gemm nodes with a constant weight matrix: what the schemes quantize."""
    return [name for name, size in _constant_matmuls(model_path)
            if size >= MIN_WEIGHT_ELEMENTS and not name.endswith(OUTLIER_SUFFIX)]


def small_constant_matmuls(model_path: str | Path) -> list[str]:
    """MatMuls with a small constant operand, always left in fp32: e.g. the rotary embedding's
    inverse-frequency x position product, which int8 destroys (mean KL 0.015 on the reference GPT)
    for a saving of a few hundred bytes. Also the fp32 halves of MatMuls split by edgetx.quant.outliers."""
    return [name for name, size in _constant_matmuls(model_path)
            if size < MIN_WEIGHT_ELEMENTS or name.endswith(OUTLIER_SUFFIX)]


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._iter: Iterator = iter(feeds)

    def get_next(self):
        return next(self._iter, None)


def check_calibration(feeds: list[dict[str, np.ndarray]] | None, inputs: list[dict]) -> None:
    """Calibration feeds must exist and match the graph's inputs (names, int64/float, ranks)."""
    from edgetx.runtimes.session import validate_inputs

    if not feeds:
        raise InputError("a calibrated scheme (static int8, QDQ, GPTQ) needs calibration data and none was given; "
                         "the bundle's quant.npz holds real text for it (rebuild the bundle if it is missing)")
    for i, feed in enumerate(feeds):
        try:
            validate_inputs(feed, inputs)
        except InputError as e:
            raise InputError(f"calibration sample {i}: {e}") from None


def apply(s: Scheme, src: str | Path, dst: str | Path, *, exclude: list[str] | None = None,
          calibration: list[dict[str, np.ndarray]] | None = None, inputs: list[dict] | None = None,
          promote: list[str] | None = None) -> None:
    """Quantize `src` into `dst` with scheme `s`, leaving the nodes in `exclude` in fp32 (and, for a scheme with
    the option `promote_bits`, writing the nodes in `promote` at that many bits)."""
    import onnx

    for name in ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(name).setLevel(logging.WARNING)  # it logs every node it visits at INFO
    exclude = list(exclude or []) + small_constant_matmuls(src)
    large = file_bytes(src) > EXTERNAL_DATA_BYTES  # onnxruntime.quantization then writes `<dst>.data` beside dst
    src, dst = str(src), str(dst)
    float_default = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # fused graphs lack some type info
    if s.method == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        o = s.options
        if o.get("outliers") and calibration:
            check_calibration(calibration, inputs or [])
        with tempfile.TemporaryDirectory(prefix="edgetx-int8-") as tmp:
            src = str(prepare_int8_graph(s, src, Path(tmp) / "prepared.onnx", calibration)[0])
            quantize_dynamic(src, dst, per_channel=o["per_channel"], reduce_range=o["reduce_range"],
                             weight_type=getattr(QuantType, o["weight_type"]), op_types_to_quantize=["MatMul", "Gemm"],
                             nodes_to_exclude=exclude + small_constant_matmuls(src), extra_options=float_default,
                             use_external_data_format=large)
    elif s.method == "static":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        check_calibration(calibration, inputs or [])
        with contextlib.redirect_stdout(io.StringIO()):  # calibrators print progress
            quantize_static(src, dst, _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                            op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=exclude,
                            calibrate_method=getattr(CalibrationMethod, s.options["calibration"]),
                            extra_options={**float_default, "CalibMovingAverage": False}, use_external_data_format=large)
    elif s.method == "qdq":
        _apply_qdq(s, src, dst, exclude, calibration, inputs or [])
    elif s.method == "grid":
        from edgetx.quant.grid import apply_grid

        try:
            apply_grid(src, dst, exclude, accuracy_level=s.options["accuracy_level"],
                       bits=tuple(s.options["grids"]) if "grids" in s.options else None,
                       needs=s.options.get("needs", 4))
        except EdgetxError as e:
            raise NotApplicable(str(e)) from None
    elif s.method == "gptq":
        from edgetx.quant.gptq import apply_gptq

        check_calibration(calibration, inputs or [])
        apply_gptq(src, dst, [n for n in weight_matmuls(src) if n not in set(exclude)], calibration, **s.options,
                   promote=promote)
    elif s.method == "weight-only":
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        o = s.options
        if o["algorithm"] == "hqq":
            algo = nbits.HQQWeightOnlyQuantConfig(block_size=o["block_size"], bits=o["bits"])
        else:
            algo = nbits.DefaultWeightOnlyQuantConfig(block_size=o["block_size"], is_symmetric=o["symmetric"],
                                                      accuracy_level=o["accuracy_level"], bits=o["bits"])
        quantizer = nbits.MatMulNBitsQuantizer(src, bits=o["bits"], block_size=o["block_size"],
                                               is_symmetric=o.get("symmetric", False),
                                               accuracy_level=o["accuracy_level"], nodes_to_exclude=exclude,
                                               algo_config=algo)
        quantizer.process()
        save_proto(quantizer.model.model, dst)
    elif s.method == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(src), keep_io_types=True, node_block_list=exclude)
        save_proto(model, dst)
    else:
        raise EdgetxError(f"scheme {s.name}: unknown method {s.method!r}")


def prepare_int8_graph(s: Scheme, src: str | Path, dst: str | Path,
                       calibration: list[dict[str, np.ndarray]] | None = None) -> tuple[Path, dict | None]:
    """The graph a dynamic scheme quantizes, and what was rewritten: `src` with the rewrites its options
    ask for (edgetx.quant.outliers) written to `dst`, or `src` itself when it asks for none or `src` already
    is such a graph. Node names of the result are what `exclude` and the mixed-precision search refer to."""
    from edgetx.quant.sensitivity import _simulate
    from edgetx.quant.outliers import prepare

    o = s.options
    if not (o.get("unpack_attention") or o.get("split_skip_layer_norm") or o.get("outliers")):
        return Path(src), None
    record = prepare(src, dst, attention=bool(o.get("unpack_attention")),
                     skip_layer_norm=bool(o.get("split_skip_layer_norm")), outliers=o.get("outliers"),
                     calibration=calibration, simulate=lambda x, w: _simulate(s, x, w), min_elements=MIN_WEIGHT_ELEMENTS)
    return (Path(src), None) if record is None else (Path(dst), record)


def _apply_qdq(s: Scheme, src: str, dst: str, exclude: list[str], calibration, inputs: list[dict]) -> None:
    """QNN-oriented static QDQ: finite masks, qnn_preprocess_model, get_qnn_qdq_config, quantize."""
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    from edgetx.passes.files import transform_file
    from edgetx.passes.finite_masks import FiniteMasks

    check_calibration(calibration, inputs)
    o = s.options
    with tempfile.TemporaryDirectory(prefix="edgetx-qdq-") as tmp:
        finite = Path(tmp) / "finite.onnx"
        transform_file(src, finite, [FiniteMasks()])
        prepared = Path(tmp) / "prepared.onnx"
        if not qnn_preprocess_model(str(finite), str(prepared), fuse_layernorm=True) or not prepared.is_file():
            prepared = finite  # nothing to fuse: it writes no file
        with contextlib.redirect_stdout(io.StringIO()):  # calibrators print progress
            config = get_qnn_qdq_config(str(prepared), _Reader(calibration),
                                        calibrate_method=getattr(CalibrationMethod, o["calibration"]),
                                        activation_type=getattr(QuantType, o["activation"]),
                                        weight_type=getattr(QuantType, o["weight"]), per_channel=o["per_channel"],
                                        nodes_to_exclude=exclude or None)
            quantize(str(prepared), dst, config)


def quantize_file(name: str, src: str | Path, dst: str | Path, exclude: list[str] | None = None) -> dict:
    """`edgetx quantize`: one file, one scheme; written atomically. Returns sizes."""
    s = scheme(name)
    if needs_calibration(s):
        raise InputError(f"{name} needs calibration data; use it through `edgetx build` (the bundle keeps real "
                         "calibration text) or the Python API `edgetx.quant.apply.apply(..., calibration=...)`")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    with tempfile.TemporaryDirectory(prefix="edgetx-quant-", dir=dst.parent if dst.parent.exists() else None) as tmp:
        out = Path(tmp) / dst.name  # under its final name: an external data file's location names it
        try:
            apply(s, src, out, exclude=exclude)
        except EdgetxError:
            raise
        except Exception as e:  # onnxruntime.quantization raises plain exceptions on odd graphs
            raise EdgetxError(f"{name} could not quantize {src}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
        move(out, dst)
    return {"scheme": s.to_dict(), "bytes_before": file_bytes(src), "bytes_after": file_bytes(dst)}
