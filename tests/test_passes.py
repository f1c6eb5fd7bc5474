"""The one pass interface: every graph transformation is an onnx_ir pass with a PassResult, composable
with onnx_ir.passes.Sequential, saying "nothing to do" one way; files only through edgetx.passes.files."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

ir = pytest.importorskip("onnx_ir")
common = pytest.importorskip("onnx_ir.passes.common")

import edgetx.passes  # noqa: E402
from edgetx.errors import EdgetxError  # noqa: E402
from edgetx.passes import GraphPass, run  # noqa: E402
from edgetx.passes.files import load, save, transform_file  # noqa: E402
from edgetx.passes.fixed_dims import FixDims  # noqa: E402
from edgetx.passes.logits_to_keep import INPUT, LogitsToKeep  # noqa: E402


def _lm_head_graph() -> ir.Model:
    """hidden [batch, seq, 4] @ W [4, 8] -> logits [batch, seq, 8]."""
    hidden = ir.Value(name="hidden", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["batch", "seq", 4]))
    weight = ir.Value(name="w", const_value=ir.tensor(np.arange(32, dtype=np.float32).reshape(4, 8), name="w"))
    head = ir.node("MatMul", [hidden, weight], name="lm_head")
    logits = head.outputs[0]
    logits.name, logits.type, logits.shape = "logits", ir.TensorType(ir.DataType.FLOAT), ir.Shape(["batch", "seq", 8])
    graph = ir.Graph([hidden], [logits], nodes=[head], initializers=[weight], opset_imports={"": 18}, name="g")
    return ir.Model(graph, ir_version=10)


def test_every_transformation_is_an_onnx_ir_pass():
    found = []
    for info in pkgutil.iter_modules(edgetx.passes.__path__):
        module = importlib.import_module(f"edgetx.passes.{info.name}")
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if c.__module__ == module.__name__ and issubclass(c, GraphPass)]
    names = {c.__name__ for c in found}
    assert {"LogitsToKeep", "FiniteMasks", "FixDims", "OrtFusions", "OrtOffline", "GqaPaddedBatches",
            "CpuKernelRewrites"} <= names
    assert all(issubclass(c, ir.passes.PassBase) for c in found)


def test_passes_compose_with_sequential_and_record_what_they_did(tmp_path):
    model = _lm_head_graph()
    result = ir.passes.Sequential(LogitsToKeep(), common.RemoveUnusedNodesPass())(model)
    assert result.modified and INPUT in [v.name for v in result.model.graph.inputs]
    again = LogitsToKeep()
    model, log = run(result.model, [again])
    assert log == [again.record] and log[0]["modified"] is False
    assert log[0]["skipped"] == f"the graph already has an input {INPUT!r}"
    assert log[0]["ops_before"] == log[0]["ops_after"] == {"MatMul": 1, "Neg": 1, "Reshape": 1, "Slice": 1}


def test_logits_to_keep_slices_before_the_head_and_defaults_to_every_position(tmp_path):
    import onnxruntime as ort

    path = save(_lm_head_graph(), tmp_path / "m.onnx")
    (record,) = transform_file(path, path, [LogitsToKeep()])
    assert record["modified"] and not (tmp_path / "m.onnx.partial").exists()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    (every,) = session.run(None, {"hidden": hidden})
    (last,) = session.run(None, {"hidden": hidden, INPUT: np.array(1, np.int64)})
    assert every.shape == (2, 5, 8) and last.shape == (2, 1, 8)
    np.testing.assert_allclose(last[:, 0], every[:, -1], rtol=1e-6)


def test_no_head_is_a_skip_with_its_reason():
    model = _lm_head_graph()
    model.graph.outputs[0].name = "scores"
    result = LogitsToKeep()(model)
    assert not result.modified and "LM head" in result.details["skipped"]


def test_a_pass_error_names_the_file_and_writes_nothing(tmp_path):
    src = save(_lm_head_graph(), tmp_path / "m.onnx")
    io = {"inputs": [{"name": "hidden", "shape": ["batch", "seq", 4]}], "outputs": []}
    with pytest.raises(EdgetxError, match=r"m\.onnx: cannot give 'seq' a value"):
        transform_file(src, tmp_path / "fixed.onnx", [FixDims({"batch": 1}, io)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_fixed_dims_fixes_inputs_and_infers_outputs(tmp_path):
    src = save(_lm_head_graph(), tmp_path / "m.onnx")
    io = {"inputs": [{"name": "hidden", "shape": ["batch", "seq", 4]}],
          "outputs": [{"name": "logits", "shape": ["batch", "seq", 8]}]}
    (record,) = transform_file(src, tmp_path / "fixed.onnx", [FixDims({"batch": 1, "seq": 3}, io)])
    fixed = load(tmp_path / "fixed.onnx")
    assert list(fixed.graph.inputs[0].shape) == [1, 3, 4] and list(fixed.graph.outputs[0].shape) == [1, 3, 8]
    assert record["dims"] == {"batch": 1, "seq": 3}


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(EdgetxError, match="not a readable ONNX model"):
        load(bad)
    with pytest.raises(EdgetxError, match="no such ONNX file"):
        load(tmp_path / "missing.onnx")


def _rotary_angles_graph() -> ir.Model:
    """transformers 5's RoPE angles: cos/sin of Mul(Cast(Unsqueeze(position_ids, -1)), inv_freq)."""
    positions = ir.Value(name="position_ids", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["batch", "seq"]))
    axes = ir.Value(name="axes", const_value=ir.tensor(np.array([-1], dtype=np.int64), name="axes"))
    inv_freq = 1.0 / (10000 ** (np.arange(0, 16, 2, dtype=np.float32) / 16))
    freq = ir.Value(name="inv_freq", const_value=ir.tensor(inv_freq, name="inv_freq"))
    unsqueeze = ir.node("Unsqueeze", [positions, axes])
    cast = ir.node("Cast", unsqueeze.outputs, attributes={"to": ir.DataType.FLOAT})
    angles = ir.node("Mul", [cast.outputs[0], freq])
    cos, sin = ir.node("Cos", angles.outputs), ir.node("Sin", angles.outputs)
    for node, name in ((cos, "cos"), (sin, "sin")):
        out = node.outputs[0]
        out.name, out.type, out.shape = name, ir.TensorType(ir.DataType.FLOAT), ir.Shape(["batch", "seq", 8])
    graph = ir.Graph([positions], [cos.outputs[0], sin.outputs[0]], nodes=[unsqueeze, cast, angles, cos, sin],
                     initializers=[axes, freq], opset_imports={"": 18}, name="g")
    return ir.Model(graph, ir_version=10)


def test_rotary_angles_are_put_in_the_fusable_form_exactly(tmp_path):
    import onnxruntime as ort

    from edgetx.passes.rotary_freqs import canonical_rotary_angles

    save(_rotary_angles_graph(), tmp_path / "mul.onnx")
    model, rewritten = canonical_rotary_angles(_rotary_angles_graph())
    assert rewritten == 1 and "MatMul" in {n.op_type for n in model.graph}
    save(model, tmp_path / "matmul.onnx")
    feeds = {"position_ids": np.array([[0, 1, 2, 3000], [5, 6, 7, 65535]], dtype=np.int64)}
    before, after = (ort.InferenceSession(str(tmp_path / f)).run(None, feeds) for f in ("mul.onnx", "matmul.onnx"))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # one fp32 product either way: bit-equal
    _, again = canonical_rotary_angles(model)
    assert again == 0


def test_an_in_place_transform_of_an_external_data_pair_keeps_no_map_of_the_replaced_data(tmp_path, monkeypatch):
    """Over EXTERNAL_DATA_BYTES a model is a pair (model.onnx + model.onnx.data); transforming it in place
    replaces the data file, leaves no staging folder, keeps no map of either data file open (its pages
    would count in RSS), and onnxruntime loads the new pair."""
    import gc
    import os

    import onnxruntime as ort

    from edgetx.passes import files

    monkeypatch.setattr(files, "EXTERNAL_DATA_BYTES", 64)  # the 128-byte weight goes to the data file
    path = tmp_path / "fp32" / "model.onnx"
    path.parent.mkdir()
    save(_lm_head_graph(), path)
    assert files.data_file(path).is_file()
    gc.disable()  # what a large build sees: the collector seldom runs, and graphs are reference cycles
    try:
        transform_file(path, path, [LogitsToKeep()])
    finally:
        gc.enable()
    assert files.data_file(path).is_file() and not list(path.parent.glob(".*partial"))
    fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
           if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [target for target in fds if "model.onnx.data" in target], fds
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(["logits"], {"hidden": np.ones((1, 2, 4), np.float32), INPUT: np.array(1, np.int64)})[0]
    assert out.shape == (1, 1, 8)


def test_a_biasless_gemm_on_a_constant_weight_becomes_a_matmul_with_the_same_product():
    """A Gemm without C on an initializer (transB or not) -> MatMul, the graph output keeping its name; a Gemm with a
    bias, one whose weight is computed (a QDQ weight's DequantizeLinear) and one with alpha != 1 stay."""
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgetx.passes.gemm_matmul import GemmToMatMul

    rng = np.random.default_rng(0)
    w, w2, bias = (rng.standard_normal(s).astype(np.float32) for s in ((5, 8), (5, 3), (5,)))
    nodes = [helper.make_node("Gemm", ["x", "w"], ["t"], transB=1),  # the form torch.onnx writes
             helper.make_node("Gemm", ["t", "w2"], ["plain"]),  # no transB, a graph output
             helper.make_node("Gemm", ["x", "w", "bias"], ["biased"], transB=1),
             helper.make_node("Identity", ["w"], ["computed"]),
             helper.make_node("Gemm", ["x", "computed"], ["dynamic"], transB=1),
             helper.make_node("Gemm", ["x", "w"], ["scaled"], transB=1, alpha=0.5)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3 if n == "plain" else 5])
         for n in ("plain", "biased", "dynamic", "scaled")],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (w2, "w2"), (bias, "bias"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((2, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    result = GemmToMatMul()(ir.from_proto(model))
    assert result.details == {"rewritten": 2}
    rewritten = ir.to_proto(result.model)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("MatMul") == 2 and ops.count("Gemm") == 3 and [o.name for o in rewritten.graph.output] == [
        "plain", "biased", "dynamic", "scaled"]
    got = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})
    for a, b in zip(want, got):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert GemmToMatMul()(ir.from_proto(rewritten)).details["skipped"].startswith("no Gemm without a bias")
    onnx.checker.check_model(rewritten)
