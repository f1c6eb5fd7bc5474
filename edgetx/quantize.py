"""Quantization schemes: functions from an fp32 ONNX file (+ calibration data) to a smaller one.

All of them are onnxruntime.quantization underneath:
- `int8`: dynamic int8 (DynamicQuantizeLinear + MatMulInteger, fused by onnxruntime at load into
  DynamicQuantizeMatMul), signed 7-bit weights per output channel (QInt8, reduce_range), on a graph
  rewritten first so the int8 kernels get the work (edgetx.int8_graph: the fused Attention's Q/K/V
  projection becomes a plain MatMul, SkipLayerNormalization becomes Add + LayerNormalization);
- `int8-outliers`: `int8` plus calibrated handling of activation outlier channels (SmoothQuant
  scaling or LLM.int8()-style fp32 outlier channels, chosen per MatMul by simulated error on the
  bundle's calibration text; edgetx.int8_graph). The encoder default;
- `int8-u8` / `int8-per-tensor`: dynamic int8 with unsigned 8-bit weights per channel / per tensor on
  the graph as given (what `int8` was before; u8u8 kernels, slow on VNNI/AMX CPUs);
- `int8-static-{minmax,entropy,percentile}`: static QDQ int8 calibrated on the bundle's real text;
- `int4`, `int4-sym`, `int4-hqq`, `int8-weight-only`: weight-only MatMulNBits (block size, symmetry,
  RTN or HQQ; accuracy_level is a parameter, never a silent default);
- `int4-grid`: exact int4 for weights already on a 4-bit block grid (de-quantized GGUF Q4_0/Q4_1),
  see edgetx.grid_int4; not applicable to float-trained weights; `int4-grid-a8` is the same weights
  with int8 activations (MatMulNBits accuracy_level 4, the fast kernels) and the Q8_0 lm_head in
  exact 8-bit: faster, and the activation rounding is what its gate measures;
- `fp16`: float16 weights and activations, float32 inputs and outputs;
- `qdq-a8w8`, `qdq-a16w8`: static QDQ for NPUs (Qualcomm's HTP through the QNN EP), made with
  onnxruntime.quantization's QNN configuration (qnn_preprocess_model, then get_qnn_qdq_config:
  every op quantized, uint8 or uint16 activations, uint8 weights per tensor, MinMax calibration on
  the bundle's real text). Masks holding -inf or -3.4e38 are made finite (-1e4) first: calibrating
  them gives infinite scales (edgetx.remedies.finite_masks). Build them from an unfused graph
  (`edgetx build --no-optimize`): onnxruntime's CPU fusions (contrib ops) are not NPU ops.

Int8 portability: dynamic int8 multiplies unsigned 8-bit activations by the weights. With signed
weights (u8s8), onnxruntime's AVX2-only kernels add each pair of u8 x s8 products in int16 with
saturation (vpmaddubsw) where VNNI/AMX accumulate in int32: with full 8-bit weights a pair can reach
2 x 255 x 127 and saturate (up to 0.5 in logits measured), so a bundle verified on one CPU would not
verify on the other. `int8`/`int8-outliers` therefore use reduce_range (weights in [-64, 64]): a pair
is at most 2 x 255 x 64 = 32640 < 32767, every x86 kernel gets the same exact integer sums, and a
bundle verified here verifies there. Checked by running onnxruntime under `qemu-x86_64 -cpu Haswell`
(AVX2 kernels) against this AMX CPU: MiniLM's hidden states are bit-identical with reduce_range and
u8u8, and differ by up to 0.40 with full-range signed weights. u8u8 (`int8-u8`, `int8-per-tensor`)
is identical across x86 CPUs too, but VNNI/AMX have no u8u8 instructions: on this CPU (AMX) MiniLM
in u8u8 ran no faster than fp32 (24 vs 23 ms, batch 1 x 128, 1 thread) where u8s8 runs in ~7 ms.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetx.errors import EdgetxError, InputError
from edgetx.int8_graph import OUTLIER_SUFFIX


@dataclass(frozen=True)
class Scheme:
    name: str
    precision: str  # "int8", "int4" or "fp16": picks the gate
    method: str  # "dynamic", "static", "weight-only", "fp16"
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


SCHEMES: dict[str, Scheme] = {s.name: s for s in [
    Scheme("int8", "int8", "dynamic", {"weight_type": "QInt8", "reduce_range": True, "per_channel": True,
                                        "unpack_attention": True, "split_skip_layer_norm": True}),
    Scheme("int8-outliers", "int8", "dynamic", {"weight_type": "QInt8", "reduce_range": True, "per_channel": True,
                                                 "unpack_attention": True, "split_skip_layer_norm": True,
                                                 "outliers": {"alphas": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                                                              "threshold": 6.0, "max_channels": 8}}),
    Scheme("int8-u8", "int8", "dynamic", {"weight_type": "QUInt8", "reduce_range": False, "per_channel": True}),
    Scheme("int8-per-tensor", "int8", "dynamic", {"weight_type": "QUInt8", "reduce_range": False,
                                                  "per_channel": False}),
    Scheme("int8-static-minmax", "int8", "static", {"calibration": "MinMax"}),
    Scheme("int8-static-entropy", "int8", "static", {"calibration": "Entropy"}),
    Scheme("int8-static-percentile", "int8", "static", {"calibration": "Percentile"}),
    Scheme("int8-weight-only", "int8", "weight-only", {"bits": 8, "block_size": 32, "symmetric": False,
                                                        "algorithm": "rtn", "accuracy_level": 0}),
    Scheme("int4", "int4", "weight-only", {"bits": 4, "block_size": 32, "symmetric": False, "algorithm": "rtn",
                                           "accuracy_level": 0}),
    Scheme("int4-sym", "int4", "weight-only", {"bits": 4, "block_size": 32, "symmetric": True, "algorithm": "rtn",
                                               "accuracy_level": 0}),
    Scheme("int4-hqq", "int4", "weight-only", {"bits": 4, "block_size": 32, "algorithm": "hqq", "accuracy_level": 0}),
    Scheme("int4-grid", "int4", "grid", {"bits": 4, "block_size": 32, "symmetric": True, "accuracy_level": 0}),
    Scheme("int4-grid-a8", "int4", "grid", {"bits": 4, "block_size": 32, "symmetric": True, "accuracy_level": 4,
                                            "q8_0_weights": "exact 8-bit"}),
    Scheme("fp16", "fp16", "fp16", {}),
    Scheme("qdq-a8w8", "int8", "qdq", {"activation": "QUInt8", "weight": "QUInt8", "calibration": "MinMax",
                                       "per_channel": False, "target": "qnn"}),
    Scheme("qdq-a16w8", "int8", "qdq", {"activation": "QUInt16", "weight": "QUInt8", "calibration": "MinMax",
                                        "per_channel": False, "target": "qnn"}),
]}
CALIBRATED_METHODS = ("static", "qdq")  # schemes that need calibration data (and any with "outliers")
# Decoders: int8 weight-only. Dynamic int8 quantizes activations per tensor, and decoder hidden
# states carry outlier channels: on SmolLM2-135M it gave mean KL 0.51 / top-1 58.6% vs fp32, while
# int8 weight-only gave KL 0.0013 / top-1 97.7%. Encoders: int8-outliers
# (all-MiniLM-L6-v2: cosine mean 0.9979 / min 0.9966 with no MatMul left in fp32; batch 1 x 128 in
# 0.60x / 0.74x the time of Optimum O2+int8 at 1 / 2 threads, benchmarks/peers.py; plain `int8` needs
# 4 of its 24 MatMuls in fp32, 0.91x / 0.84x).
# int4-grid(-a8) applies only to weights de-quantized from a 4-bit GGUF; elsewhere it is recorded as not applicable.
DEFAULT_SCHEMES = {"causal-lm": ("int8-weight-only", "int4", "int4-grid", "int4-grid-a8"), "encoder": ("int8-outliers", "int4")}


class NotApplicable(EdgetxError):
    """The scheme has nothing to do on this model (e.g. int4-grid on float-trained weights)."""


def needs_calibration(s: Scheme) -> bool:
    return s.method in CALIBRATED_METHODS or bool(s.options.get("outliers"))


def scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise InputError(f"unknown quantization scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]


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
    for a saving of a few hundred bytes. Also the fp32 halves of MatMuls split by edgetx.int8_graph."""
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
        raise InputError("static quantization needs calibration data and none was given; the bundle's "
                         "quant/calibration.npz holds real text for it (rebuild the bundle if it is missing)")
    for i, feed in enumerate(feeds):
        try:
            validate_inputs(feed, inputs)
        except InputError as e:
            raise InputError(f"calibration sample {i}: {e}") from None


def apply(s: Scheme, src: str | Path, dst: str | Path, *, exclude: list[str] | None = None,
          calibration: list[dict[str, np.ndarray]] | None = None, inputs: list[dict] | None = None) -> None:
    """Quantize `src` into `dst` with scheme `s`, leaving the nodes in `exclude` in fp32."""
    import onnx

    for name in ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(name).setLevel(logging.WARNING)  # it logs every node it visits at INFO
    exclude = list(exclude or []) + small_constant_matmuls(src)
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
                             nodes_to_exclude=exclude + small_constant_matmuls(src), extra_options=float_default)
    elif s.method == "static":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        check_calibration(calibration, inputs or [])
        with contextlib.redirect_stdout(io.StringIO()):  # calibrators print progress
            quantize_static(src, dst, _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                            op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=exclude,
                            calibrate_method=getattr(CalibrationMethod, s.options["calibration"]),
                            extra_options={**float_default, "CalibMovingAverage": False})
    elif s.method == "qdq":
        _apply_qdq(s, src, dst, exclude, calibration, inputs or [])
    elif s.method == "grid":
        from edgetx.grid_int4 import apply_grid

        try:
            apply_grid(src, dst, exclude, accuracy_level=s.options["accuracy_level"])
        except EdgetxError as e:
            raise NotApplicable(str(e)) from None
    elif s.method == "weight-only":
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits

        o = s.options
        if o["algorithm"] == "hqq":
            algo = nbits.HQQWeightOnlyQuantConfig(block_size=o["block_size"], bits=o["bits"])
        else:
            algo = nbits.DefaultWeightOnlyQuantConfig(block_size=o["block_size"], is_symmetric=o["symmetric"],
                                                      accuracy_level=o["accuracy_level"], bits=o["bits"])
        quantizer = nbits.MatMulNBitsQuantizer(onnx.load(src), bits=o["bits"], block_size=o["block_size"],
                                               is_symmetric=o.get("symmetric", False),
                                               accuracy_level=o["accuracy_level"], nodes_to_exclude=exclude,
                                               algo_config=algo)
        quantizer.process()
        onnx.save(quantizer.model.model, dst)
    elif s.method == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(src), keep_io_types=True, node_block_list=exclude)
        onnx.save(model, dst)
    else:
        raise EdgetxError(f"scheme {s.name}: unknown method {s.method!r}")


def prepare_int8_graph(s: Scheme, src: str | Path, dst: str | Path,
                       calibration: list[dict[str, np.ndarray]] | None = None) -> tuple[Path, dict | None]:
    """The graph a dynamic scheme quantizes, and what was rewritten: `src` with the rewrites its options
    ask for (edgetx.int8_graph) written to `dst`, or `src` itself when it asks for none or `src` already
    is such a graph. Node names of the result are what `exclude` and the mixed-precision search refer to."""
    from edgetx.gates import _simulate
    from edgetx.int8_graph import prepare

    o = s.options
    if not (o.get("unpack_attention") or o.get("split_skip_layer_norm") or o.get("outliers")):
        return Path(src), None
    record = prepare(src, dst, attention=bool(o.get("unpack_attention")),
                     skip_layer_norm=bool(o.get("split_skip_layer_norm")), outliers=o.get("outliers"),
                     calibration=calibration, simulate=lambda x, w: _simulate(s, x, w), min_elements=MIN_WEIGHT_ELEMENTS)
    return (Path(src), None) if record is None else (Path(dst), record)


def _apply_qdq(s: Scheme, src: str, dst: str, exclude: list[str], calibration, inputs: list[dict]) -> None:
    """QNN-oriented static QDQ: finite masks, qnn_preprocess_model, get_qnn_qdq_config, quantize."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    from edgetx.remedies import finite_masks

    check_calibration(calibration, inputs)
    o = s.options
    with tempfile.TemporaryDirectory(prefix="edgetx-qdq-") as tmp:
        model = onnx.load(src)
        finite_masks(model)
        finite = Path(tmp) / "finite.onnx"
        onnx.save(model, str(finite))
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
                         "calibration text) or the Python API `edgetx.quantize.apply(..., calibration=...)`")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    with tempfile.TemporaryDirectory(prefix="edgetx-quant-", dir=dst.parent if dst.parent.exists() else None) as tmp:
        out = Path(tmp) / "model.onnx"
        try:
            apply(s, src, out, exclude=exclude)
        except EdgetxError:
            raise
        except Exception as e:  # onnxruntime.quantization raises plain exceptions on odd graphs
            raise EdgetxError(f"{name} could not quantize {src}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
        out.replace(dst)
    return {"scheme": s.to_dict(), "bytes_before": src.stat().st_size, "bytes_after": dst.stat().st_size}
