"""Fused GroupQueryAttention made right for left-padded batches."""

from __future__ import annotations

import json

import numpy as np

from edgetx.errors import EdgetxError
from edgetx.passes.base import GraphPass, PassResult, add_initializer, ir

MS_DOMAIN = "com.microsoft"


ATTENTION_WINDOWS_KEY = "edgetx.attention_windows"  # graph metadata: JSON list, one window (or null) per layer


class GqaPaddedBatches(GraphPass):
    """Make fused GroupQueryAttention right for left-padded batches.

    The fusion rewriter derives GroupQueryAttention's `seqlens_k` from the attention mask and lets
    the kernel rotate q/k at positions counted from each row's start. The kernel reads that as
    right padding, so a left-padded row attends to its pads and is rotated at the wrong positions
    (max |diff| 23 in SmolLM2's logits). Here every row is full length (`seqlens_k` = total - 1),
    the pads are masked by an additive `attention_bias` built once from the mask, and q/k are
    rotated by RotaryEmbedding at the model's own `position_ids`: the same numbers as the unfused
    graph, at the fused kernel's speed.

    Sliding-window layers (the exporter lists each layer's window in the graph's metadata): the fused
    kernel would attend to the whole history, so their bias also masks keys W or more positions behind
    the query, as the model's own mask does. The fused nodes are the layers in graph order.
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
        windows = json.loads(model.metadata_props.get(ATTENTION_WINDOWS_KEY, "[]")) or [None] * len(attention)
        if len(windows) != len(attention):
            raise EdgetxError(f"{len(attention)} fused GroupQueryAttention nodes for {len(windows)} layers with "
                              "sliding-window attention: cannot tell which node is which layer, so the fused "
                              "graph would lose the window; keep the unfused graph")
        seqlens_k, total_len, attention_bias, shared = self._shared(graph, inputs["attention_mask"])
        biases = {None: attention_bias}
        for window in sorted({w for w in windows if w}):
            biases[window] = self._windowed(graph, attention_bias, window, shared)
        graph.insert_before(next(iter(graph)), shared)
        position_ids, rotated = inputs["position_ids"], 0
        for node, window in zip(attention, windows):
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
            ins[5:11] = [seqlens_k, total_len, None, None, None, biases[window]]
            node.resize_inputs(11)
            for index, value in enumerate(ins):
                node.replace_input_with(index, value)
        windowed = sum(1 for w in windows if w)
        return self.done(model, attention_nodes=len(attention), rotary_moved_out=rotated,
                         **({"sliding_window_layers": windowed} if windowed else {}))

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

    def _windowed(self, graph: ir.Graph, attention_bias: ir.Value, window: int, nodes: list[ir.Node]) -> ir.Value:
        """attention_bias plus MASK_BIAS where the key is `window` or more positions behind the query
        (query i of `new` sits at total - new + i)."""
        p = f"{self.PREFIX}.w{window}"
        by_name = {n.outputs[0].name: n.outputs[0] for n in nodes}
        total, new = by_name[f"{self.PREFIX}.total_0d"], by_name[f"{self.PREFIX}.new"]
        constants = {name: add_initializer(graph, f"{p}.{name}", array) for name, array in {
            "zero": np.array(0, np.int64), "one": np.array(1, np.int64), "window": np.array(window, np.int64),
            "axis_1": np.array([1], np.int64), "axis_0": np.array([0], np.int64),
            "mask_bias": np.array(self.MASK_BIAS, np.float32), "zero_f": np.array(0.0, np.float32)}.items()}

        def op(op_type: str, inputs: list, out: str, **attributes) -> ir.Value:
            node = ir.node(op_type, inputs, attributes or None)
            node.outputs[0].name = f"{p}.{out}"
            nodes.append(node)
            return node.outputs[0]

        new_0d = op("Squeeze", [new], "new_0d")
        first = op("Sub", [total, new_0d], "first_query")
        queries = op("Range", [first, total, constants["one"]], "queries")
        keys = op("Range", [constants["zero"], total, constants["one"]], "keys")
        behind = op("Sub", [op("Unsqueeze", [queries, constants["axis_1"]], "queries_col"),
                            op("Unsqueeze", [keys, constants["axis_0"]], "keys_row")], "behind")
        outside = op("GreaterOrEqual", [behind, constants["window"]], "outside")
        window_bias = op("Where", [outside, constants["mask_bias"], constants["zero_f"]], "bias")
        return op("Add", [attention_bias, window_bias], "attention_bias")
