"""`logits_to_keep`: let a causal-LM graph compute logits for the last k positions only.

A prompt's logits are wanted only at its last position, yet the LM head runs over every
position: for SmolLM2-135M (vocabulary 49,152) that is 7 GFLOP of a 128-token prefill,
a third of it. This pass adds an optional int64 scalar input `logits_to_keep` and slices the
hidden states before the head. Its stored default 0 keeps every position (the graph as
exported); the Generator and the benchmarks feed 1 for a prompt. Decode steps are one
position either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT = "logits_to_keep"
INPUT_SPEC = {"name": INPUT, "dtype": "int64", "shape": [], "optional": True, "default": 0}
_PASS_THROUGH = {"Cast", "Identity"}  # ops the head's output may go through before it is `logits`
_HEADS = {"MatMul", "FusedMatMul", "Gemm", "MatMulNBits"}


def _head(graph) -> object | None:
    """The MatMul-like node whose output becomes the `logits` graph output."""
    producers = {o: n for n in graph.node for o in n.output}
    node = producers.get("logits")
    while node is not None and node.op_type in _PASS_THROUGH:
        node = producers.get(node.input[0])
    return node if node is not None and node.op_type in _HEADS else None


def add_logits_to_keep(path: str | Path) -> str | None:
    """Rewrite the ONNX file at `path` in place; return why nothing was done, or None when done."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    if any(i.name == INPUT for i in graph.input):
        return f"the graph already has an input {INPUT!r}"
    head = _head(graph)
    if head is None:
        return "no MatMul-like LM head produces the 'logits' output"
    hidden = head.input[0]
    kept = f"{hidden}.last_positions"
    graph.input.append(helper.make_tensor_value_info(INPUT, onnx.TensorProto.INT64, []))
    graph.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), INPUT),  # overridable default
                              numpy_helper.from_array(np.array([1], np.int64), f"{INPUT}.one_element"),
                              numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), f"{INPUT}.end"),
                              numpy_helper.from_array(np.array([-2], np.int64), f"{INPUT}.axis")])
    slicing = [helper.make_node("Neg", [INPUT], [f"{INPUT}.neg"], name=f"{INPUT}.neg"),
               # Reshape, not Unsqueeze: Slice wants 1-D starts whether the feed arrives as a scalar or
               # as shape [1] (edgetx's own wire to remote workers once turned scalars into [1])
               helper.make_node("Reshape", [f"{INPUT}.neg", f"{INPUT}.one_element"], [f"{INPUT}.start"],
                                name=f"{INPUT}.start"),
               helper.make_node("Slice", [hidden, f"{INPUT}.start", f"{INPUT}.end", f"{INPUT}.axis"], [kept],
                                name=f"{INPUT}.slice")]
    nodes = list(graph.node)
    at = nodes.index(head)
    head.input[0] = kept
    del graph.node[:]
    graph.node.extend(nodes[:at] + slicing + nodes[at:])
    for output in graph.output:
        if output.name == "logits" and len(output.type.tensor_type.shape.dim) == 3:
            output.type.tensor_type.shape.dim[1].dim_param = "logits_seq"  # seq, or fewer when asked
    onnx.save(model, str(path))
    return None
