"""Decoder self-attention fused as MultiHeadAttention over a concatenated KV cache, rewritten as GroupQueryAttention.

onnxruntime's fusion rewriter turns a model with as many KV heads as query heads (GPT-2 style, the reference GPT)
into MultiHeadAttention whose key and value are `Concat(past, new)` — the present outputs. That graph can only
copy its cache each step. GroupQueryAttention with kv_num_heads = num_heads computes the same attention and appends
to the past itself, so past and present can be one buffer written in place: edgetx's bound cache
(edgetx.runtimes.ort_cpu.binding) and onnxruntime-genai's `past_present_share_buffer`. After the rewrite, the
pads, positions and sliding windows are handled as for fused GQA (edgetx.passes.gqa_padding), which this pass runs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir.passes.common  # noqa: F401  (ir.passes.common)

from edgetx.kinds.decoding import PAST_PREFIX, PRESENT_PREFIX
from edgetx.passes.base import GraphPass, PassResult, add_initializer, ir
from edgetx.passes.gqa_padding import MS_DOMAIN, GqaPaddedBatches


class MhaAsGqa(GraphPass):
    """MultiHeadAttention(q, Concat(past_k, k), Concat(past_v, v)) whose concats are the present outputs ->
    GroupQueryAttention(q, k, v, past_k, past_v) writing the presents, then GqaPaddedBatches."""

    name = "mha-as-gqa"
    PREFIX = "edgetx_mha_gqa"

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        attention = [n for n in graph if n.op_type == "MultiHeadAttention" and n.domain == MS_DOMAIN]
        if not attention:
            return self.skipped(model, "no fused MultiHeadAttention")
        matches, reasons = [], []
        for node in attention:
            match = self._match(graph, node)
            (matches if not isinstance(match, str) else reasons).append(match)
        if reasons:  # all or none: a graph half in GQA form would keep copying the other half's cache
            return self.skipped(model, f"{len(reasons)} of {len(attention)} MultiHeadAttention nodes do not "
                                       f"match: {reasons[0]}")
        shape = add_initializer(graph, f"{self.PREFIX}.bsd", np.array([0, 0, -1], np.int64))
        for node, past_k, k_new, past_v, v_new, present_k, present_v in matches:
            self._rewrite(graph, node, shape, (past_k, k_new, present_k), (past_v, v_new, present_v))
        ir.passes.common.RemoveUnusedNodesPass()(model)  # the mask the MultiHeadAttention nodes read, now unread
        batch_reads = self._batch_from_input_ids(graph)
        result = GqaPaddedBatches().call(model)
        return self.done(model, attention_nodes=len(matches), past_batch_reads_moved=batch_reads,
                         **{k: v for k, v in result.details.items() if k != "attention_nodes"})

    @staticmethod
    def _batch_from_input_ids(graph: ir.Graph) -> int:
        """Read the batch size from input_ids where the graph reads it from a past input's shape (the exporter's
        `view(B, ...)`), so that the past is read by the attention only and its buffer can be longer than the past."""
        ids = next((v for v in graph.inputs if v.name == "input_ids"), None)
        moved = 0
        for node in list(graph):
            if (ids is not None and node.op_type == "Shape" and node.domain == "" and node.inputs[0].is_graph_input()
                    and node.inputs[0].name.startswith(PAST_PREFIX) and node.attributes.get_int("start", 0) == 0
                    and node.attributes.get_int("end", -1) == 1):
                node.replace_input_with(0, ids)
                moved += 1
        return moved

    @staticmethod
    def _match(graph: ir.Graph, node: ir.Node):
        """(node, past_k, k_new, past_v, v_new, present_k, present_v), or why the node does not match."""
        ins = list(node.inputs) + [None] * (8 - len(node.inputs))
        if any(ins[i] is not None for i in (3, 4, 6, 7)):
            return f"{node.name} has a bias, a key padding mask or past inputs of its own"
        if node.attributes.get_int("unidirectional", 0):
            return f"{node.name} is unidirectional"
        outputs = {v.name: v for v in graph.outputs}
        found = []
        for value, what in ((ins[1], "key"), (ins[2], "value")):
            concat = value.producer() if value is not None else None
            if concat is None or concat.op_type != "Concat" or concat.attributes.get_int("axis", 0) not in (2, -2):
                return f"{node.name}'s {what} is not a Concat of the past and the new positions"
            past, new = concat.inputs
            if past is None or not past.name.startswith(PAST_PREFIX) or not past.is_graph_input():
                return f"{node.name}'s {what} does not start with a past_key_values input"
            present = PRESENT_PREFIX + past.name[len(PAST_PREFIX):]
            if outputs.get(present) is not value or len(value.uses()) != 1:
                return f"{node.name}'s {what} is not (only) the graph output {present}"
            if new.shape is not None and len(new.shape) != 4:
                return f"{node.name}'s new {what} is not [batch, heads, seq, head_dim]"
            found += [past, new, value]
        past_k, k_new, present_k, past_v, v_new, present_v = found
        return node, past_k, k_new, past_v, v_new, present_k, present_v

    def _rewrite(self, graph: ir.Graph, node: ir.Node, shape: ir.Value, key: tuple, value: tuple) -> None:
        heads = node.attributes.get_int("num_heads")
        flat = []
        for past, new, _ in (key, value):  # [batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim]
            moved = ir.node("Transpose", [new], {"perm": [0, 2, 1, 3]}, name=f"{node.name}.{past.name}.bshd")
            moved.outputs[0].name = moved.name
            flat_node = ir.node("Reshape", [moved.outputs[0], shape], name=f"{node.name}.{past.name}.bsd")
            flat_node.outputs[0].name = flat_node.name
            graph.insert_before(node, [moved, flat_node])
            flat.append(flat_node.outputs[0])
        attributes = {"num_heads": heads, "kv_num_heads": heads}
        scale = node.attributes.get("scale")
        if scale is not None:
            attributes["scale"] = scale.as_float()
        gqa = ir.node("GroupQueryAttention", [node.inputs[0], flat[0], flat[1], key[0], value[0]], attributes,
                      domain=MS_DOMAIN, num_outputs=3, name=f"{node.name}.gqa")
        graph.insert_before(node, gqa)
        out = node.outputs[0]
        gqa.outputs[0].type, gqa.outputs[0].shape = out.type, out.shape
        out.replace_all_uses_with(gqa.outputs[0])
        gqa.outputs[0].name = f"{gqa.name}.out"
        concats = []
        for (_, _, present), produced in zip((key, value), gqa.outputs[1:]):
            index = list(graph.outputs).index(present)
            name = present.name
            concats.append(present.producer())
            present.name = f"{name}.concat"
            produced.name, produced.type, produced.shape = name, present.type, present.shape
            graph.outputs[index] = produced
        graph.remove(node, safe=True)
        for concat in concats:
            graph.remove(concat, safe=True)
