"""Fused GroupQueryAttention made right for left-padded batches."""

from __future__ import annotations

import numpy as np

from edgetx.passes import PassResult, _ir, op_histogram


class GqaPaddedBatches:
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

    def __call__(self, model) -> PassResult:
        import onnx
        from onnx import helper, numpy_helper

        ir = _ir()
        proto = ir.to_proto(model)
        graph = proto.graph
        attention = [n for n in graph.node if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]
        missing = {"attention_mask", "position_ids"} - {i.name for i in graph.input}
        if not attention or missing:
            reason = "no fused GroupQueryAttention" if not attention else f"graph has no input {sorted(missing)}"
            ops = op_histogram(model)
            return PassResult(model, False, {"skipped": reason, "ops_before": ops, "ops_after": ops})
        p = "edgetx_gqa"
        constants = {f"{p}.one": np.array(1, np.int64), f"{p}.one_1d": np.array([1], np.int64),
                     f"{p}.one_f": np.array(1.0, np.float32), f"{p}.mask_bias": np.array(self.MASK_BIAS, np.float32),
                     f"{p}.axes_1_2": np.array([1, 2], np.int64)}
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
        node = helper.make_node
        shared = [
            node("Shape", ["attention_mask"], [f"{p}.batch"], start=0, end=1),
            node("Shape", ["attention_mask"], [f"{p}.total"], start=1, end=2),
            node("Shape", ["position_ids"], [f"{p}.new"], start=1, end=2),
            node("Sub", [f"{p}.total", f"{p}.one"], [f"{p}.last"]),  # seqlens_k: every row full length
            node("Expand", [f"{p}.last", f"{p}.batch"], [f"{p}.last_b"]),
            node("Cast", [f"{p}.last_b"], [f"{p}.seqlens_k"], to=onnx.TensorProto.INT32),
            node("Squeeze", [f"{p}.total"], [f"{p}.total_0d"]),
            node("Cast", [f"{p}.total_0d"], [f"{p}.total_len"], to=onnx.TensorProto.INT32),
            node("Cast", ["attention_mask"], [f"{p}.mask_f"], to=onnx.TensorProto.FLOAT),  # bias = (1 - mask) * -1e4
            node("Sub", [f"{p}.one_f", f"{p}.mask_f"], [f"{p}.pads"]),
            node("Mul", [f"{p}.pads", f"{p}.mask_bias"], [f"{p}.bias_bt"]),
            node("Unsqueeze", [f"{p}.bias_bt", f"{p}.axes_1_2"], [f"{p}.bias_b11t"]),
            node("Concat", [f"{p}.batch", f"{p}.one_1d", f"{p}.new", f"{p}.total"], [f"{p}.bias_shape"], axis=0),
            node("Expand", [f"{p}.bias_b11t", f"{p}.bias_shape"], [f"{p}.attention_bias"]),
        ]
        nodes, rotated = [], 0
        for n in graph.node:
            if n in attention:
                attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
                ins = list(n.input) + [""] * (11 - len(n.input))
                if attrs.get("do_rotary"):
                    for i, heads in ((0, attrs["num_heads"]), (1, attrs["kv_num_heads"])):
                        out = f"{n.name}.rotary{i}"
                        nodes.append(node("RotaryEmbedding", [ins[i], "position_ids", ins[7], ins[8]], [out],
                                          name=out, domain="com.microsoft", num_heads=heads,
                                          interleaved=attrs.get("rotary_interleaved", 0)))
                        ins[i] = out
                    rotated += 1
                ins[5:11] = [f"{p}.seqlens_k", f"{p}.total_len", "", "", "", f"{p}.attention_bias"]
                del n.input[:]
                n.input.extend(ins)
                for a in n.attribute:
                    if a.name == "do_rotary":
                        a.i = 0
            nodes.append(n)
        del graph.node[:]
        graph.node.extend(shared + nodes)
        before = op_histogram(model)
        model = ir.from_proto(proto)
        return PassResult(model, True, {"attention_nodes": len(attention), "rotary_moved_out": rotated,
                                        "ops_before": before, "ops_after": op_histogram(model)})

