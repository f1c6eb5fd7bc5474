"""GGUF files of every common type (tests/gguf_models.py): transformers loads them, edgetx finds the block
grid each type's de-quantized weights sit on, and the grid schemes ship those weights bit for bit.

"Bit for bit" is checked two ways: the variant's MatMulNBits initializers (and offsets) de-quantized in
numpy equal transformers' fp32 weights (==), and onnxruntime itself, fed the identity matrix through the
rewritten MatMul, returns exactly those weights.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gguf_models import TYPES, write_gguf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# the grid each type's weight matrices sit on: (bits, block, offset MatMul needed); None: no grid
EXPECTED = {"F16": None, "Q8_0": (8, 32, False), "Q4_0": (4, 32, False), "Q4_1": (4, 32, True),
            "Q5_0": (8, 32, False), "Q5_1": (8, 32, True), "Q4_K": (4, 32, True), "Q5_K": (8, 32, True),
            "Q6_K": (8, 16, False)}
SCHEME = {"Q4_0": "int4-grid", "Q4_1": "int4-grid", "Q4_K": "int4-grid", "Q8_0": "int8-grid",
          "Q5_0": "int8-grid", "Q5_1": "int8-grid", "Q5_K": "int8-grid", "Q6_K": "int8-grid"}
FAST_BUILDS = ("Q4_K", "Q6_K")  # one 4-bit and one 8-bit grid build in the fast run; the rest are slow


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gguf")
    for qtype in TYPES:
        write_gguf(folder / f"tiny-{qtype}.gguf", qtype)
    return folder


def _hf_weights(path: Path) -> dict[str, np.ndarray]:
    """transformers' de-quantized fp32 weight matrices of a GGUF file, as [K, N] (input x output)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return {name: p.detach().numpy().T.copy() for name, p in model.named_parameters()
            if p.ndim == 2 and not name.endswith("embed_tokens.weight")}


@pytest.mark.parametrize("qtype", TYPES)
def test_each_type_is_found_on_its_grid_bit_for_bit(gguf_dir, qtype):
    from edgetx.exporters.hf import gguf_types
    from edgetx.quant.grid import weight_fit

    path = gguf_dir / f"tiny-{qtype}.gguf"
    assert gguf_types(path)["matrix_types"] == {qtype: 14}  # 2 layers x 7 matrices
    weights = _hf_weights(path)
    assert len(weights) == 15  # and the untied lm_head
    for name, w in weights.items():
        found = weight_fit(w)
        if EXPECTED[qtype] is None:
            assert found is None, name
            continue
        assert (found.bits, found.block, found.offset is not None) == EXPECTED[qtype], name
        assert found.exact and (found.dequantize() == w.astype(np.float64)).all(), name


def _one_matmul(path: Path, w: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = w.shape[0]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


@pytest.mark.parametrize("qtype", [t for t in TYPES if EXPECTED[t]])
def test_onnxruntime_runs_each_grid_with_the_exact_weights(gguf_dir, tmp_path, qtype):
    """The rewritten MatMul (MatMulNBits, plus the block-sum offset MatMul where the grid needs it) fed the
    identity matrix gives back the GGUF's de-quantized weights exactly: onnxruntime 1.32's CPU kernel
    de-quantizes to fl32(scale * (q - zero_point)) and the offsets add without rounding."""
    import onnx

    from edgetx.quant.grid import apply_grid
    from edgetx.runtimes import SessionOptions, get_backend

    weights = _hf_weights(gguf_dir / f"tiny-{qtype}.gguf")
    bits, block, offset = EXPECTED[qtype]
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        w = weights[name]
        src, dst = tmp_path / "one.onnx", tmp_path / "grid.onnx"
        _one_matmul(src, w)
        assert apply_grid(src, dst, bits=(4, 8), needs=bits) == 1
        ops = Counter(n.op_type for n in onnx.load(str(dst)).graph.node)
        assert ops["MatMulNBits"] == 1 and ops["MatMul"] == int(offset), ops
        session = get_backend("ort-cpu").create_session(dst, SessionOptions())
        eye = np.eye(w.shape[0], dtype=np.float32)[None]
        got = session.run({"x": eye}, ["y"]).outputs["y"][0]
        assert (got == w).all(), (name, np.abs(got - w).max())


def dequantized_columns(model_path: Path) -> tuple[list[np.ndarray], list[dict]]:
    """Every weight column a grid variant holds, de-quantized in numpy from its MatMulNBits initializers
    (scale * (q - zero point) in fp32, plus the block offsets of the MatMul over block sums that is added
    to its output, in float64), and each MatMulNBits node's attributes."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producer = {out: node for node in model.graph.node for out in node.output}
    columns, kernels = [], []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert len(node.input) == 3, "grid variants give MatMulNBits no zero points (the default 8 / 128)"
        k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
        raw, scale = inits[node.input[1]], inits[node.input[2]].reshape(n, k // block)
        if bits == 4:
            q = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(n, k // block, block)
        else:
            q = raw.reshape(n, k // block, block)
        body = (scale[..., None] * (q.astype(np.float32) - np.float32(1 << (bits - 1)))).astype(np.float32)
        values = body.astype(np.float64)
        for add in consumers.get(node.output[0], []):
            other = [producer.get(i) for i in add.input if i != node.output[0]]
            if add.op_type == "Add" and other and other[0] is not None and other[0].op_type == "MatMul":
                offset = inits[other[0].input[1]]  # [blocks, N]
                values = values + offset.T.astype(np.float64)[..., None]
        columns += list(values.reshape(n, k))
        kernels.append(attrs)
    return columns, kernels


def _build_and_check(gguf_dir: Path, tmp_path: Path, qtype: str, quantize: tuple[str, ...] | None) -> dict:
    from edgetx.build import build
    from edgetx.bundle import Bundle

    path = gguf_dir / f"tiny-{qtype}.gguf"
    bundle = build(path, tmp_path / "bundle", optimize=False, quantize=quantize)
    assert bundle.variant("fp32").parity["passed"]
    assert bundle.manifest["model"]["gguf"]["matrix_types"] == {qtype: 14}
    results = bundle.manifest["quantization"]["results"]
    if qtype not in SCHEME:  # F16: no grid, the grid schemes say so and ship nothing
        for name in ("int4-grid", "int8-grid"):
            if name in results:
                assert "no weight MatMul" in results[name]["not_applicable"]
        return results
    name = SCHEME[qtype]
    assert results[name]["gate_passed"] and results[name]["gate"]["kld_mean"] < 1e-9, results[name]
    assert results[name]["gate"]["top1"] == 1.0
    variant = Bundle.load(bundle.path).variant(name)
    assert variant.parity["passed"]
    columns, kernels = dequantized_columns(bundle.file(f"{name}/model.onnx"))
    bits, block, _ = EXPECTED[qtype]
    assert kernels and all(k["bits"] == bits and k["block_size"] == block and k["accuracy_level"] == 0
                           for k in kernels)
    def key(column: np.ndarray) -> bytes:  # + 0.0: -0.0 == 0.0 (a negative scale times q - zp = 0)
        return (column.astype(np.float64) + 0.0).tobytes()

    want = Counter(key(c) for w in _hf_weights(path).values() for c in w.T)
    assert Counter(key(c) for c in columns) == want  # every weight column of the model, ==, and nothing else
    return results


@pytest.mark.parametrize("qtype", [pytest.param(t, marks=[] if t in FAST_BUILDS else [pytest.mark.slow])
                                   for t in TYPES])
def test_build_verifies_and_ships_each_type_bit_exact(gguf_dir, tmp_path, qtype):
    """Load, build (unfused, the type's grid scheme), verify; the grid variant's weights are the GGUF's."""
    quantize = (SCHEME[qtype],) if qtype in SCHEME else ("int4-grid", "int8-grid")
    _build_and_check(gguf_dir, tmp_path, qtype, quantize)


@pytest.mark.slow
def test_decoder_default_picks_the_matching_grid_scheme(gguf_dir, tmp_path):
    """A GGUF whose layers are on an 8-bit grid gets int8-grid and int8-grid-a8 by default (a whole default
    build); a 4-bit one keeps the decoder defaults, whose int4-grid applies (the kind's choice, from the
    manifest's GGUF tensor types)."""
    from edgetx.kinds import get_kind

    results = _build_and_check(gguf_dir, tmp_path, "Q8_0", None)
    assert {"int8-weight-only-a8", "int4", "int4-grid", "int4-grid-a8", "int8-grid", "int8-grid-a8"} <= set(results)
    kind = get_kind("causal-lm")
    assert kind.schemes_for({"gguf": {"matrix_types": {"Q4_0": 14}}}) == kind.default_schemes
    assert kind.schemes_for({"gguf": {"matrix_types": {"Q6_K": 7, "Q4_K": 7}}})[-2:] == ("int8-grid", "int8-grid-a8")
