"""The fp32 graph that dynamic int8 quantizes, rewritten so onnxruntime's CPU int8 path gets the work.

Two rewrites of onnxruntime's fused encoder graph (com.microsoft contrib ops), both exact up to fp32
summation order, and optionally (`outliers`) a calibrated treatment of activation outlier channels:

- `UnpackAttention`: a fused `Attention` holds the Q/K/V projection inside it, so dynamic int8 leaves
  a quarter of an encoder's weight FLOPs in fp32 (onnxruntime.quantization's QAttention refuses
  `qkv_hidden_sizes` and drops an `attention_bias` input, which is what the fusion of a torch.onnx
  export gives). It becomes MatMul(x, W_qkv) -> Split -> `MultiHeadAttention`(q, k, v, bias,
  attention_bias): the projection is a plain weight MatMul that dynamic int8 quantizes, the rest is
  the same attention kernel. On all-MiniLM-L6-v2 (batch 1 x 128, 1 thread) the fused Attention ops took
  6.6 ms of a 13.7 ms int8 run, the unpacked ones 2.7 ms plus ~0.9 ms of int8 projection. Its additive
  attention_bias is floored at ATTENTION_BIAS_FLOOR (Max), which keeps padded input fast (see there).
- `SplitSkipLayerNorm`: onnxruntime's CPU `SkipLayerNormalization` is a scalar loop with a division
  per element: 220 us for 128 x 384 at 1 thread, vs 37 us for Add + Add + `LayerNormalization`
  (vectorized). Once the MatMuls are int8 its 12 nodes are a third of MiniLM's time (3.0 of ~10 ms).
  The skip is added before the bias: onnxruntime fuses Add(Add(x, bias), skip) + LayerNormalization
  back into SkipLayerNormalization at session load (tests/test_quantize.py checks the loaded graph).
- `outliers` (edgetx.quant.outliers): SmoothQuant scaling or LLM.int8()-style fp32 outlier channels
  per MatMul, chosen by simulated int8 error on calibration text.

A node is rewritten only when the rewrite is known to be equivalent: Attention with constant
weights (an initializer, or a Concat of initializers), no mask_index or past input, attributes
num_heads / qkv_hidden_sizes (equal Q, K, V sizes) / scale / mask_filter_value / unidirectional=0
(what onnxruntime's offline optimization writes out); SkipLayerNormalization
whose mean and inverse-std outputs are unused, in a graph of opset >= 17.

`CpuKernelRewrites` applies both after the fusions (an fp32 optimization candidate); edgetx.quant.outliers
applies them to the graph dynamic int8 quantizes.
"""

from __future__ import annotations

import numpy as np

from edgetx.passes.base import GraphPass, PassResult, add_initializer, default_opset, ir, run
from onnx_ir.passes.common import RemoveUnusedNodesPass  # after base: its friendly error when onnx-ir is missing

MS_DOMAIN = "com.microsoft"
# Masked attention scores are floored at this: onnxruntime's softmax (MLAS) clamps exp's argument at
# -88.4 and so gives masked keys a denormal probability instead of 0, and on padded input the attention
# then multiplies mostly denormals (MiniLM, 15 real tokens of 128, 1 thread: attention 7.6 ms, 2.9 ms
# floored). e^-60 keeps them normal floats and below fp32 resolution next to the best real key (unless
# a masked key outscores it by 43): MiniLM's hidden states at real tokens came out bit-identical.
ATTENTION_BIAS_FLOOR = -60.0
FLOOR_NAME = "edgetx/attention_bias_floor"
_ATTENTION_ATTRIBUTES = {"num_heads", "qkv_hidden_sizes", "scale", "mask_filter_value", "unidirectional"}


def _is_initializer(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and value.const_value is not None


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The value of `value` if it is an initializer or a Concat of initializers, else None."""
    if value is None:
        return None
    if _is_initializer(value):
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Concat" and node.inputs and all(map(_is_initializer, node.inputs)):
        axis = node.attributes.get_int("axis")
        if axis is not None:
            return np.concatenate([v.const_value.numpy() for v in node.inputs], axis=axis)
    return None


def _packed_weight(node: ir.Node) -> np.ndarray | None:
    """The Q/K/V weight of a fused Attention that unpacks exactly (see the module docstring), else None."""
    if not (node.op_type == "Attention" and node.domain == MS_DOMAIN and len(node.inputs) <= 6):
        return None
    inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
    if (inputs[3] is not None or inputs[4] is not None or not set(node.attributes) <= _ATTENTION_ATTRIBUTES
            or node.attributes.get_int("unidirectional", 0)):
        return None
    weight = _constant(inputs[1])
    sizes = list(node.attributes.get_ints("qkv_hidden_sizes", []))
    if (weight is None or weight.ndim != 2 or weight.shape[1] % 3
            or (sizes and (len(set(sizes)) != 1 or sum(sizes) != weight.shape[1]))):
        return None
    return weight


class UnpackAttention(GraphPass):
    """Fused Attention -> MatMul(x, W_qkv) + Split + MultiHeadAttention, its attention bias floored at
    ATTENTION_BIAS_FLOOR (one Max per distinct bias, just before its first use); then the Concats that
    built the packed weights and the initializers nothing reads any more are removed."""

    name = "unpack-attention"

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        count, floored, floor = 0, {}, None
        for node in list(graph):
            weight = _packed_weight(node)
            if weight is None:
                continue
            inputs = list(node.inputs) + [None] * (6 - len(node.inputs))
            prefix = node.name or node.outputs[0].name
            w = add_initializer(graph, f"{prefix}/weight", np.ascontiguousarray(weight, dtype=np.float32))
            split = add_initializer(graph, f"{prefix}/split", np.full(3, weight.shape[1] // 3, np.int64))
            matmul = ir.node("MatMul", [inputs[0], w], outputs=[ir.val(f"{prefix}/qkv")], name=f"{prefix}/qkv_MatMul")
            qkv = ir.node("Split", [matmul.outputs[0], split], {"axis": -1},
                          outputs=[ir.val(f"{prefix}/{k}") for k in "qkv"], name=f"{prefix}/qkv_Split")
            new_nodes = [matmul, qkv]
            bias = inputs[5]
            if bias is not None:  # floored once per distinct bias tensor, just before its first use
                if bias not in floored:
                    if floor is None:
                        floor = graph.initializers.get(FLOOR_NAME)
                        if floor is None:
                            floor = add_initializer(graph, FLOOR_NAME, np.array(ATTENTION_BIAS_FLOOR, np.float32))
                    new_nodes.append(ir.node("Max", [bias, floor], outputs=[ir.val(f"{bias.name}/floored")],
                                             name=f"{bias.name}/floor"))
                    floored[bias] = new_nodes[-1].outputs[0]
                bias = floored[bias]
            mha_inputs = [*qkv.outputs, inputs[2], None, bias]
            while mha_inputs[-1] is None:
                mha_inputs.pop()
            kept = [a for name, a in node.attributes.items() if name not in ("qkv_hidden_sizes", "unidirectional")]
            mha = ir.Node(MS_DOMAIN, "MultiHeadAttention", mha_inputs, kept, num_outputs=len(node.outputs),
                          name=f"{prefix}/MHA")
            ir.convenience.replace_nodes_and_values(graph, node, [node], [*new_nodes, mha],
                                                    list(node.outputs), list(mha.outputs))
            count += 1
        if not count:
            return _nothing(self, model, "attention_unpacked",
                            "no fused Attention that unpacks exactly (constant weights, no mask_index or past)")
        RemoveUnusedNodesPass()(model)  # the Concats of Q/K/V weights, the packed weights
        return self.done(model, attention_unpacked=count)


def _used(value: ir.Value | None) -> bool:
    return value is not None and bool(value.uses() or value.is_graph_output())


class SplitSkipLayerNorm(GraphPass):
    """SkipLayerNormalization -> Add(x, skip) (+ Add bias) + LayerNormalization, where its mean and
    inverse-std outputs are unused and the graph's opset has LayerNormalization (17)."""

    name = "split-skip-layer-norm"

    def call(self, model: ir.Model) -> PassResult:
        opset = default_opset(model)
        if opset < 17:
            return _nothing(self, model, "skip_layer_norm_split", f"opset {opset}: LayerNormalization is opset 17")
        graph, count = model.graph, 0
        for node in list(graph):
            outputs = list(node.outputs) + [None] * (4 - len(node.outputs))
            if not (node.op_type == "SkipLayerNormalization" and node.domain == MS_DOMAIN
                    and not _used(outputs[1]) and not _used(outputs[2]) and len(node.inputs) >= 3):
                continue
            x, skip, gamma, beta, bias = (list(node.inputs) + [None] * 5)[:5]
            prefix = node.name or outputs[0].name
            total = ir.val(f"{prefix}/sum")  # takes the name of the sum output when something reads it
            first = ir.val(f"{prefix}/skip_sum") if bias is not None else total
            new_nodes = [ir.node("Add", [x, skip], outputs=[first], name=f"{prefix}/Add")]
            if bias is not None:  # after the skip Add: Add(Add(x, bias), skip) + LayerNormalization is fused back at load
                new_nodes.append(ir.node("Add", [first, bias], outputs=[total], name=f"{prefix}/AddBias"))
            new_nodes.append(ir.node("LayerNormalization", [total, gamma] + ([beta] if beta is not None else []),
                                     {"axis": -1, "epsilon": node.attributes.get_float("epsilon", 1e-12)},
                                     name=f"{prefix}/LayerNorm"))
            old, new = [outputs[0]], [new_nodes[-1].outputs[0]]
            if _used(outputs[3]):
                old.append(outputs[3])
                new.append(total)
            ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, old, new)
            count += 1
        if not count:
            return _nothing(self, model, "skip_layer_norm_split",
                            "no SkipLayerNormalization whose mean and inverse-std outputs are unused")
        return self.done(model, skip_layer_norm_split=count)


def _nothing(p: GraphPass, model: ir.Model, key: str, reason: str) -> PassResult:
    """Skipped, with the count callers read (0) kept in the record."""
    result = p.skipped(model, reason)
    result.details[key] = 0
    return result


class CpuKernelRewrites(GraphPass):
    """After the fusions, swap two fused encoder ops for what onnxruntime's CPU kernels run faster
    (measured above): Attention -> MatMul + Split + MultiHeadAttention with the
    attention bias floored (no denormal softmax on padded input), and SkipLayerNormalization ->
    Add + LayerNormalization. Exact up to fp32 summation order; the parity check decides."""

    name = "cpu-kernel-rewrites"

    def call(self, model: ir.Model) -> PassResult:
        model, records = run(model, [UnpackAttention(), SplitSkipLayerNorm()])
        counts = {key: r[key] for r in records for key in ("attention_unpacked", "skip_layer_norm_split")
                  if key in r}
        if not any(counts.values()):
            result = self.skipped(model, "; ".join(r["skipped"] for r in records))
            result.details.update(counts)
            return result
        return self.done(model, **counts)
