"""`LogitsToKeep`: let a causal-LM graph compute logits for the last k positions only.

A prompt's logits are wanted only at its last position, yet the LM head runs over every
position: for SmolLM2-135M (vocabulary 49,152) that is 7 GFLOP of a 128-token prefill,
a third of it. This pass adds an optional int64 scalar input `logits_to_keep` and slices the
hidden states before the head. Its stored default 0 keeps every position (the graph as
exported); the Generator and the benchmarks feed 1 for a prompt. Decode steps are one
position either way.
"""

from __future__ import annotations

import numpy as np

from edgetx.passes.base import GraphPass, PassResult, add_initializer, ir

INPUT = "logits_to_keep"
INPUT_SPEC = {"name": INPUT, "dtype": "int64", "shape": [], "optional": True, "default": 0}
_PASS_THROUGH = {"Cast", "Identity"}  # ops the head's output may go through before it is `logits`
_HEADS = {"MatMul", "FusedMatMul", "Gemm", "MatMulNBits"}


def _head(graph: ir.Graph) -> ir.Node | None:
    """The MatMul-like node whose output becomes the `logits` graph output."""
    logits = next((o for o in graph.outputs if o.name == "logits"), None)
    node = logits.producer() if logits is not None else None
    while node is not None and node.op_type in _PASS_THROUGH:
        node = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
    return node if node is not None and node.op_type in _HEADS else None


class LogitsToKeep(GraphPass):
    """Add the optional input `logits_to_keep` (default 0: every position) and slice the hidden states
    to the last k positions before the LM head."""

    name = "logits-to-keep"
    adds_inputs = (INPUT_SPEC,)

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        if any(i.name == INPUT for i in graph.inputs):
            return self.skipped(model, f"the graph already has an input {INPUT!r}")
        head = _head(graph)
        if head is None:
            return self.skipped(model, "no MatMul-like LM head produces the 'logits' output")
        keep = ir.Value(name=INPUT, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]),
                        const_value=ir.tensor(np.array(0, np.int64), name=INPUT))  # the overridable default
        graph.inputs.append(keep)
        graph.register_initializer(keep)
        one = add_initializer(graph, f"{INPUT}.one_element", np.array([1], np.int64))
        end = add_initializer(graph, f"{INPUT}.end", np.array([np.iinfo(np.int64).max], np.int64))
        axis = add_initializer(graph, f"{INPUT}.axis", np.array([-2], np.int64))
        neg = ir.node("Neg", [keep], name=f"{INPUT}.neg")
        neg.outputs[0].name = f"{INPUT}.neg"
        # Reshape, not Unsqueeze: Slice wants 1-D starts whether the feed arrives as a scalar or as shape [1]
        # (edgetx's own wire to remote workers once turned scalars into [1])
        start = ir.node("Reshape", [neg.outputs[0], one], name=f"{INPUT}.start")
        start.outputs[0].name = f"{INPUT}.start"
        hidden = head.inputs[0]
        sliced = ir.node("Slice", [hidden, start.outputs[0], end, axis], name=f"{INPUT}.slice")
        sliced.outputs[0].name = f"{hidden.name}.last_positions"
        graph.insert_before(head, [neg, start, sliced])
        head.replace_input_with(0, sliced.outputs[0])
        for output in graph.outputs:
            if output.name == "logits" and output.shape is not None and len(output.shape) == 3:
                dims = list(output.shape)
                dims[1] = ir.SymbolicDim("logits_seq")  # seq, or fewer when asked
                output.shape = ir.Shape(dims)
        return self.done(model)
