"""Quantization schemes: a name, the precision whose gate it must pass, the method and its options.


All of them are onnxruntime.quantization underneath:
- `int8`: dynamic int8 (DynamicQuantizeLinear + MatMulInteger, fused by onnxruntime at load into
  DynamicQuantizeMatMul), signed 7-bit weights per output channel (QInt8, reduce_range), on a graph
  rewritten first so the int8 kernels get the work (edgetx.quant.outliers and edgetx.passes.cpu_kernels: the fused Attention's Q/K/V
  projection becomes a plain MatMul, SkipLayerNormalization becomes Add + LayerNormalization);
- `int8-outliers`: `int8` plus calibrated handling of activation outlier channels (SmoothQuant
  scaling or LLM.int8()-style fp32 outlier channels, chosen per MatMul by simulated error on the
  bundle's calibration text; edgetx.quant.outliers). The encoder default;
- `int8-u8` / `int8-per-tensor`: dynamic int8 with unsigned 8-bit weights per channel / per tensor on
  the graph as given (what `int8` was before; u8u8 kernels, slow on VNNI/AMX CPUs);
- `int8-static-{minmax,entropy,percentile}`: static QDQ int8 calibrated on the bundle's real text;
- `int4`, `int4-sym`, `int4-hqq`, `int8-weight-only`: weight-only MatMulNBits (block size, symmetry,
  RTN or HQQ; accuracy_level is a parameter, never a silent default); `int8-weight-only-a8` is symmetric
  8-bit weights run with int8 activations (accuracy_level 4): onnxruntime has no fast 8-bit kernel at
  level 0, so that is the 8-bit weight-only variant that can be faster than fp32;
- `int4-gptq`: int4 MatMulNBits (block 32, asymmetric, integer zero points, accuracy_level 0) whose codes GPTQ
  chooses from the MatMuls' inputs on the bundle's calibration text (edgetx.quant.gptq): on the reference GPT
  mean KL 0.0007 where RTN `int4` gives 0.0023, the same size; `int4-gptq-a8` the same weights at
  accuracy_level 4 (int8 activations);
- `int4-mixed`: `int4-gptq` whose mixed-precision search (edgetx.quant.gates), when the gate misses, moves the
  MatMuls that damage it most (an untied lm_head first) to 8-bit GPTQ MatMulNBits, 1, 2, 4, ... of them, instead
  of keeping them in fp32 (llama.cpp's k-quant recipes keep sensitive tensors at more bits the same way, by a fixed
  rule; here the gate picks the count). The 8-bit nodes run at accuracy_level 4: onnxruntime 1.32's 8-bit kernel at
  level 0 took 36 ms for a 1 x 896 x 4864 product that fp32 does in 2.4 ms and level 4 in 0.14 ms. A tied lm_head
  stays fp32 like in every int4 scheme (its fp32 copy is the embedding);
- `int4-grid`: exact int4 for weights already on a 4-bit block grid (de-quantized GGUF Q4_0/Q4_1),
  see edgetx.quant.grid; not applicable to float-trained weights; `int4-grid-a8` is the same weights
  with int8 activations (MatMulNBits accuracy_level 4, the fast kernels) and the Q8_0 lm_head in
  exact 8-bit: faster, and the activation rounding is what its gate measures; `int8-grid` is exact 8-bit
  (and 4-bit) for weights on an 8-bit block grid (GGUF Q5_0/Q5_1/Q5_K/Q6_K/Q8_0), accuracy_level 0, and
  `int8-grid-a8` the same at level 4; not applicable unless some weight sits on an 8-bit grid only;
- `fp16`: float16 weights and activations, float32 inputs and outputs;
- `qdq-a8w8`, `qdq-a16w8`: static QDQ for NPUs (Qualcomm's HTP through the QNN EP), made with
  onnxruntime.quantization's QNN configuration (qnn_preprocess_model, then get_qnn_qdq_config:
  every op quantized, uint8 or uint16 activations, uint8 weights per tensor, MinMax calibration on
  the bundle's real text). Masks holding -inf or -3.4e38 are made finite (-1e4) first: calibrating
  them gives infinite scales (edgetx.passes.finite_masks). Build them from an unfused graph
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

from dataclasses import asdict, dataclass, field

from edgetx.errors import EdgetxError, InputError


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
    Scheme("int8-weight-only-a8", "int8", "weight-only", {"bits": 8, "block_size": 32, "symmetric": True,
                                                           "algorithm": "rtn", "accuracy_level": 4}),
    Scheme("int4", "int4", "weight-only", {"bits": 4, "block_size": 32, "symmetric": False, "algorithm": "rtn",
                                           "accuracy_level": 0}),
    Scheme("int4-sym", "int4", "weight-only", {"bits": 4, "block_size": 32, "symmetric": True, "algorithm": "rtn",
                                               "accuracy_level": 0}),
    Scheme("int4-hqq", "int4", "weight-only", {"bits": 4, "block_size": 32, "algorithm": "hqq", "accuracy_level": 0}),
    Scheme("int4-gptq", "int4", "gptq", {"bits": 4, "block_size": 32, "symmetric": False, "accuracy_level": 0,
                                         "damp": 0.01, "clip": True}),
    Scheme("int4-gptq-a8", "int4", "gptq", {"bits": 4, "block_size": 32, "symmetric": False, "accuracy_level": 4,
                                            "damp": 0.01, "clip": True}),
    Scheme("int4-mixed", "int4", "gptq", {"bits": 4, "block_size": 32, "symmetric": False, "accuracy_level": 0,
                                          "damp": 0.01, "clip": True, "promote_bits": 8, "promote_accuracy_level": 4}),
    Scheme("int4-grid", "int4", "grid", {"bits": 4, "block_size": 32, "symmetric": True, "accuracy_level": 0}),
    Scheme("int4-grid-a8", "int4", "grid", {"bits": 4, "block_size": 32, "symmetric": True, "accuracy_level": 4,
                                            "q8_0_weights": "exact 8-bit"}),
    Scheme("int8-grid", "int8", "grid", {"bits": 8, "block_size": 32, "symmetric": True, "accuracy_level": 0,
                                         "grids": [4, 8], "needs": 8}),
    Scheme("int8-grid-a8", "int8", "grid", {"bits": 8, "block_size": 32, "symmetric": True, "accuracy_level": 4,
                                            "grids": [4, 8], "needs": 8}),
    Scheme("fp16", "fp16", "fp16", {}),
    Scheme("qdq-a8w8", "int8", "qdq", {"activation": "QUInt8", "weight": "QUInt8", "calibration": "MinMax",
                                       "per_channel": False, "target": "qnn"}),
    Scheme("qdq-a16w8", "int8", "qdq", {"activation": "QUInt16", "weight": "QUInt8", "calibration": "MinMax",
                                        "per_channel": False, "target": "qnn"}),
]}
CALIBRATED_METHODS = ("static", "qdq", "gptq")  # schemes that need calibration data (and any with "outliers")
# Each model kind names its default schemes (edgetx.kinds: ModelKind.default_schemes).


class NotApplicable(EdgetxError):
    """The scheme has nothing to do on this model (e.g. int4-grid on float-trained weights)."""


def needs_calibration(s: Scheme) -> bool:
    return s.method in CALIBRATED_METHODS or bool(s.options.get("outliers"))


def scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise InputError(f"unknown quantization scheme {name!r}; known: {', '.join(SCHEMES)}")
    return SCHEMES[name]

