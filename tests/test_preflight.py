"""Pre-flight logic that needs no vendor stack: log parsing, node reading, remedies, the CLI wiring."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "runtimes" / "worker"))  # ort_worker / onnx_nodes are plain scripts for the workers

LOG = """\
2026-11-28 23:56:37.83 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for 1 nodes in OrtNodeUnit (Erf) :
\tOperator type: Erf Node name: erf Node index: 3
\tREASON : Operators of type `Erf` are not supported by QNN EP.

Schema error: Trying to register schema with name Abs
2026-11-28 23:56:38.11 [V:onnxruntime:, session_state.cc:1598 VerifyEachNodeIsAssignedToAnEp] Node placements
2026-11-28 23:56:38.11 [V:onnxruntime:, session_state.cc:1604 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [QNNExecutionProvider]. Number of nodes: 1
2026-11-28 23:56:38.11 [V:onnxruntime:, session_state.cc:1606 VerifyEachNodeIsAssignedToAnEp]   QNNExecutionProvider_77_1 (QNNExecutionProvider_QNNExecutionProvider_77_1_0)
2026-11-28 23:56:38.11 [V:onnxruntime:, session_state.cc:1604 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 1
2026-11-28 23:56:38.11 [V:onnxruntime:, session_state.cc:1606 VerifyEachNodeIsAssignedToAnEp]   Erf (erf)
2026-11-28 23:56:38.11 [I:onnxruntime:, allocation_planner.cc:2818 CreateGraphPartitioner] Use DeviceBasedPartition as default
"""


def test_parse_placement_reads_node_lists_and_reasons():
    from ort_worker import parse_placement

    placed, messages = parse_placement(LOG)
    assert placed == {"QNNExecutionProvider": [("QNNExecutionProvider_77_1", "QNNExecutionProvider_QNNExecutionProvider_77_1_0")],
                      "CPUExecutionProvider": [("Erf", "erf")]}
    assert len(messages) == 1 and "Node name: erf" in messages[0] and "REASON" in messages[0]


def test_onnx_nodes_matches_onnx(tiny_bundle_master):
    import onnx
    from onnx_nodes import read_nodes

    path = Path(tiny_bundle_master) / "fp32" / "model.onnx"
    want = [{"name": n.name, "op_type": n.op_type, "domain": n.domain, "inputs": list(n.input),
             "outputs": list(n.output)} for n in onnx.load(str(path)).graph.node]
    assert read_nodes(str(path)) == want


def test_finite_masks_replaces_float_min_and_keeps_results():
    from onnx import TensorProto, helper, numpy_helper

    import onnx_ir as ir

    from edgetx.passes.finite_masks import FiniteMasks, mask_constants

    fill = numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "fill")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    graph = helper.make_graph(
        [helper.make_node("Where", ["keep", "zero", "fill"], ["bias"]), helper.make_node("Add", ["x", "bias"], ["s"]),
         helper.make_node("Softmax", ["s"], ["y"], axis=-1)], "g",
        [helper.make_tensor_value_info("keep", TensorProto.BOOL, [1, 4]), helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [fill, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    ir_model = ir.from_proto(model)
    assert mask_constants(ir_model) and FiniteMasks()(ir_model).details["changed"] == 1 and not mask_constants(ir_model)
    model = ir.to_proto(ir_model)
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    keep = np.array([[True, True, False, True]])
    x = np.array([[0.5, -1.0, 3.0, 2.0]], np.float32)
    (y,) = session.run(None, {"keep": keep, "x": x})
    want = np.exp(x - x[keep].max()) * keep
    np.testing.assert_allclose(y, want / want.sum(), rtol=1e-6)


def test_remedy_rules():
    from edgetx.verify.preflight import _remedy

    assert _remedy("com.microsoft.Attention", "P", True, True, "")[0] == "ort-fusions"
    assert _remedy("MatMulInteger", "P", True, True, "")[0] == "dynamic-int8"
    assert _remedy("com.microsoft.MatMulNBits", "P", True, True, "")[0] == "weight-only"
    assert _remedy("MatMul", "P", False, True, "Cannot get shape")[0] == "dynamic-shapes"
    kind, remedy = _remedy("Mod", "P", True, True, "Cannot get shape")
    assert kind == "unsupported-op" and "Cannot get shape" in remedy


def test_preflight_command_is_registered_and_refuses_backends_without_placement(tiny_bundle_master):
    from click.testing import CliRunner

    from edgetx.cli import preflight  # noqa: F401  (registers the command until edgetx.cli imports it)
    from edgetx.cli import main

    result = CliRunner().invoke(main, ["preflight", str(tiny_bundle_master), "--backend", "ort-cpu"])
    assert result.exit_code == 1 and "does not report node placement" in result.output, result.output


def test_qdq_schemes_are_calibrated_static_int8():
    from edgetx.quant.schemes import CALIBRATED_METHODS, SCHEMES

    for name in ("qdq-a8w8", "qdq-a16w8"):
        assert SCHEMES[name].method in CALIBRATED_METHODS and SCHEMES[name].precision == "int8"
