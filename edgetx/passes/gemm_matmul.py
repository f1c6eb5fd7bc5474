"""`GemmToMatMul`: a Gemm without a bias (C) on a constant weight becomes a MatMul on the weight as it multiplies.

torch.onnx writes a bias-less Linear on a 2-D input as Gemm(A, W, transB=1) with no C (CLIP's and SigLIP's
projections, a ViT head). onnxruntime 1.21's XNNPACK execution provider claims every Gemm and crashes while
loading one without C (measured on the tiny ViT, CLIP and SigLIP graphs: the worker process dies; the same graph
with the Gemm written as a MatMul loads and agrees). MatMul is the form every execution provider takes, and the
product is the same: fixed-shape copies, which are made for such providers, get this rewrite (and are checked
against their dynamic graph anyway).
"""

from __future__ import annotations

import numpy as np

from edgetx.passes.base import GraphPass, PassResult, add_initializer, ir


def why_not(node: ir.Node) -> str | None:
    """Why this node is not a bias-less Gemm on a constant weight that a MatMul can replace, or None."""
    if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
        return "not a Gemm"
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        return "it has a bias (C): a Gemm with C loads"
    if node.attributes.get_float("alpha", 1.0) != 1.0 or node.attributes.get_int("transA", 0):
        return "alpha != 1 or transA: not a plain product"
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or len(weight.const_value.shape) != 2:
        return "its weight is not a constant 2-D tensor (e.g. a QDQ DequantizeLinear output)"
    return None


class GemmToMatMul(GraphPass):
    """Every bias-less Gemm on a constant 2-D weight replaced by MatMul(A, W or W transposed)."""

    name = "gemm-to-matmul"

    def call(self, model: ir.Model) -> PassResult:
        graph, rewritten = model.graph, 0
        for node in [n for n in graph if why_not(n) is None]:
            a, weight = node.inputs[0], node.inputs[1]
            if node.attributes.get_int("transB", 0):
                array = np.ascontiguousarray(weight.const_value.numpy().T)
                weight = add_initializer(graph, f"{weight.name}.transposed.{rewritten}", array)
            old = node.outputs[0]
            name, old.name = old.name, f"{old.name}.gemm"  # the MatMul's output keeps the name (a graph output's)
            matmul = ir.node("MatMul", [a, weight], name=f"{node.name}.as_matmul" if node.name else f"gemm_as_matmul_{rewritten}")
            graph.insert_after(node, matmul)
            new = matmul.outputs[0]
            new.name, new.shape, new.type = name, old.shape, old.type
            old.replace_all_uses_with(new, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            rewritten += 1
        if not rewritten:
            return self.skipped(model, "no Gemm without a bias on a constant weight")
        for value in list(graph.initializers.values()):  # weights that only the Gemms used
            if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
                graph.initializers.pop(value.name)
        return self.done(model, rewritten=rewritten)
