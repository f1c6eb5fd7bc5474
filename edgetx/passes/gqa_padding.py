"""Fused GroupQueryAttention made right for left-padded batches."""

from __future__ import annotations

import numpy as np

from edgetx.passes.base import GraphPass, PassResult, add_initializer, ir

MS_DOMAIN = "com.microsoft"


class GqaPaddedBatches(GraphPass):
    """Make fused GroupQueryAttention right for left-padded batches.

    The fusion rewriter derives GroupQueryAttention's `seqlens_k` from the attention mask and lets
    the kernel rotate q/k at positions counted from each row's start. The kernel reads that as
    right padding, so a left-padded row attends to its pads and is rotated at the wrong positions
    (max |diff| 23 in SmolLM2's logits). Here every row is full length (`seqlens_k` = total - 1),
    the pads are masked by an additive `attention_bias` built once from the mask, and q/k are
    rotated by RotaryEmbedding at the model's own `position_ids`: the same numbers as the unfused
    graph, at the fused kernel's speed.
    """

    name = "gqa-padded-batches"
    MASK_BIAS = -1e4  # added to a padded key's score: finite, so fp16 graphs and all-pad rows stay NaN-free
    PREFIX = "edgetx_gqa"

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        attention = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS_DOMAIN]
        inputs = {v.name: v for v in graph.inputs}
        missing = {"attention_mask", "position_ids"} - set(inputs)
        if not attention:
            return self.skipped(model, "no fused GroupQueryAttention")
        if missing:
            return self.skipped(model, f"graph has no input {sorted(missing)}")
        seqlens_k, total_len, attention_bias, shared = self._shared(graph, inputs["attention_mask"])
        graph.insert_before(next(iter(graph)), shared)
        position_ids, rotated = inputs["position_ids"], 0
        for node in attention:
            ins = list(node.inputs) + [None] * (11 - len(node.inputs))
            if node.attributes.get_int("do_rotary", 0):
                interleaved = node.attributes.get_int("rotary_interleaved", 0)
                for i, heads in ((0, node.attributes.get_int("num_heads")), (1, node.attributes.get_int("kv_num_heads"))):
                    name = f"{node.name}.rotary{i}"
                    rotary = ir.node("RotaryEmbedding", [ins[i], position_ids, ins[7], ins[8]],
                                     {"num_heads": heads, "interleaved": interleaved}, domain=MS_DOMAIN, name=name)
                    rotary.outputs[0].name = name
                    graph.insert_before(node, rotary)
                    ins[i] = rotary.outputs[0]
                rotated += 1
                node.attributes["do_rotary"] = ir.AttrInt64("do_rotary", 0)
            ins[5:11] = [seqlens_k, total_len, None, None, None, attention_bias]
            node.resize_inputs(11)
            for index, value in enumerate(ins):
                node.replace_input_with(index, value)
        return self.done(model, attention_nodes=len(attention), rotary_moved_out=rotated)

    def _shared(self, graph: ir.Graph, mask: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value, list[ir.Node]]:
        """The nodes every attention shares: seqlens_k (every row full length), total_len, and the
        additive bias (1 - mask) * MASK_BIAS broadcast to [batch, 1, new, total]."""
        p = self.PREFIX
        constants = {name: add_initializer(graph, f"{p}.{name}", array) for name, array in {
            "one": np.array(1, np.int64), "one_1d": np.array([1], np.int64), "one_f": np.array(1.0, np.float32),
            "mask_bias": np.array(self.MASK_BIAS, np.float32), "axes_1_2": np.array([1, 2], np.int64)}.items()}
        nodes: list[ir.Node] = []
        position_ids = next(v for v in graph.inputs if v.name == "position_ids")

        def op(op_type: str, inputs: list, out: str, **attributes) -> ir.Value:
            node = ir.node(op_type, inputs, attributes or None)
            node.outputs[0].name = f"{p}.{out}"
            nodes.append(node)
            return node.outputs[0]

        batch = op("Shape", [mask], "batch", start=0, end=1)
        total = op("Shape", [mask], "total", start=1, end=2)
        new = op("Shape", [position_ids], "new", start=1, end=2)
        last = op("Sub", [total, constants["one"]], "last")
        last_b = op("Expand", [last, batch], "last_b")
        seqlens_k = op("Cast", [last_b], "seqlens_k", to=ir.DataType.INT32)
        total_0d = op("Squeeze", [total], "total_0d")
        total_len = op("Cast", [total_0d], "total_len", to=ir.DataType.INT32)
        mask_f = op("Cast", [mask], "mask_f", to=ir.DataType.FLOAT)
        pads = op("Sub", [constants["one_f"], mask_f], "pads")
        bias_bt = op("Mul", [pads, constants["mask_bias"]], "bias_bt")
        bias_b11t = op("Unsqueeze", [bias_bt, constants["axes_1_2"]], "bias_b11t")
        shape = op("Concat", [batch, constants["one_1d"], new, total], "bias_shape", axis=0)
        attention_bias = op("Expand", [bias_b11t, shape], "attention_bias")
        return seqlens_k, total_len, attention_bias, nodes
