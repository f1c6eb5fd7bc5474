"""The fp32 graph that dynamic int8 quantizes, rewritten so onnxruntime's CPU int8 path gets the work.

Two rewrites of onnxruntime's fused encoder graph (com.microsoft contrib ops), both exact up to fp32
summation order, and optionally (`outliers`) a calibrated treatment of activation outlier channels:

- `unpack_attention`: a fused `Attention` holds the Q/K/V projection inside it, so dynamic int8 leaves
  a quarter of an encoder's weight FLOPs in fp32 (onnxruntime.quantization's QAttention refuses
  `qkv_hidden_sizes` and drops an `attention_bias` input, which is what the fusion of a torch.onnx
  export gives). It becomes MatMul(x, W_qkv) -> Split -> `MultiHeadAttention`(q, k, v, bias,
  attention_bias): the projection is a plain weight MatMul that dynamic int8 quantizes, the rest is
  the same attention kernel. On all-MiniLM-L6-v2 (batch 1 x 128, 1 thread) the fused Attention ops took
  6.6 ms of a 13.7 ms int8 run, the unpacked ones 2.7 ms plus ~0.9 ms of int8 projection. Its additive
  attention_bias is floored at ATTENTION_BIAS_FLOOR (Max), which keeps padded input fast (see there).
- `split_skip_layer_norm`: onnxruntime's CPU `SkipLayerNormalization` is a scalar loop with a division
  per element: 220 us for 128 x 384 at 1 thread, vs 37 us for Add + Add + `LayerNormalization`
  (vectorized). Once the MatMuls are int8 its 12 nodes are a third of MiniLM's time (3.0 of ~10 ms).
  The skip is added before the bias: onnxruntime fuses Add(Add(x, bias), skip) + LayerNormalization
  back into SkipLayerNormalization at session load (tests/test_quantize.py checks the loaded graph).
- `outliers` (see the section below): SmoothQuant scaling or LLM.int8()-style fp32 outlier channels
  per MatMul, chosen by simulated int8 error on calibration text.

A node is rewritten only when the rewrite is known to be equivalent: Attention with constant
weights (an initializer, or a Concat of initializers), no mask_index or past input, attributes
num_heads / qkv_hidden_sizes (equal Q, K, V sizes) / scale / mask_filter_value / unidirectional=0
(what onnxruntime's offline optimization writes out); SkipLayerNormalization
whose mean and inverse-std outputs are unused, in a graph of opset >= 17.

`CpuKernelRewrites` applies both to an onnx_ir model after the fusions (an fp32 optimization candidate).
"""

from __future__ import annotations

import numpy as np

from edgetx.passes import PassResult, _ir, op_histogram

MS_DOMAIN = "com.microsoft"
# Masked attention scores are floored at this: onnxruntime's softmax (MLAS) clamps exp's argument at
# -88.4 and so gives masked keys a denormal probability instead of 0, and on padded input the attention
# then multiplies mostly denormals (MiniLM, 15 real tokens of 128, 1 thread: attention 7.6 ms, 2.9 ms
# floored). e^-60 keeps them normal floats and below fp32 resolution next to the best real key (unless
# a masked key outscores it by 43): MiniLM's hidden states at real tokens came out bit-identical.
ATTENTION_BIAS_FLOOR = -60.0
FLOOR_NAME = "edgetx/attention_bias_floor"
_ATTENTION_ATTRIBUTES = {"num_heads", "qkv_hidden_sizes", "scale", "mask_filter_value", "unidirectional"}


def _attributes(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant(name: str, initializers: dict, producers: dict) -> np.ndarray | None:
    """The value of `name` if it is an initializer or a Concat of initializers, else None."""
    from onnx import numpy_helper

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Concat" and node.input and all(i in initializers for i in node.input):
        return np.concatenate([numpy_helper.to_array(initializers[i]) for i in node.input],
                              axis=_attributes(node)["axis"])
    return None


def unpack_attention(model) -> int:
    """Rewrite fused Attention nodes in place; returns how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    nodes, count, floored_biases = [], 0, set()
    for node in graph.node:
        attrs = _attributes(node)
        inputs = list(node.input) + [""] * (6 - len(node.input))
        weight = None
        if (node.op_type == "Attention" and node.domain == MS_DOMAIN and len(node.input) <= 6
                and not inputs[3] and not inputs[4] and set(attrs) <= _ATTENTION_ATTRIBUTES
                and not attrs.get("unidirectional")):
            weight = _constant(inputs[1], initializers, producers)
        sizes = list(attrs.get("qkv_hidden_sizes", []))
        if (weight is None or weight.ndim != 2 or weight.shape[1] % 3
                or (sizes and (len(set(sizes)) != 1 or sum(sizes) != weight.shape[1]))):
            nodes.append(node)
            continue
        prefix = node.name or node.output[0]
        names = {k: f"{prefix}/{k}" for k in ("weight", "qkv", "split", "q", "k", "v")}
        graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), names["weight"]),
            numpy_helper.from_array(np.full(3, weight.shape[1] // 3, np.int64), names["split"])])
        nodes.append(helper.make_node("MatMul", [inputs[0], names["weight"]], [names["qkv"]],
                                      name=f"{prefix}/qkv_MatMul"))
        nodes.append(helper.make_node("Split", [names["qkv"], names["split"]], [names["q"], names["k"], names["v"]],
                                      name=f"{prefix}/qkv_Split", axis=-1))
        bias = inputs[5]
        if bias:  # floored once per distinct bias tensor, just before its first use
            floored = f"{bias}/floored"
            if floored not in floored_biases:
                floored_biases.add(floored)
                nodes.append(helper.make_node("Max", [bias, FLOOR_NAME], [floored], name=f"{bias}/floor"))
            bias = floored
        mha_inputs = [names["q"], names["k"], names["v"], inputs[2], "", bias]
        while not mha_inputs[-1]:
            mha_inputs.pop()
        kept = {k: v for k, v in attrs.items() if k not in ("qkv_hidden_sizes", "unidirectional")}
        nodes.append(helper.make_node("MultiHeadAttention", mha_inputs, list(node.output), name=f"{prefix}/MHA",
                                      domain=MS_DOMAIN, **kept))
        count += 1
    if count:
        if floored_biases:
            graph.initializer.append(numpy_helper.from_array(np.array(ATTENTION_BIAS_FLOOR, np.float32), FLOOR_NAME))
        del graph.node[:]
        graph.node.extend(nodes)
        drop_dead(graph)
    return count


def split_skip_layer_norm(model) -> int:
    """Rewrite SkipLayerNormalization as Add (+ Add bias) + LayerNormalization in place; returns how many."""
    from onnx import helper

    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 17:
        return 0  # LayerNormalization is opset 17
    graph = model.graph
    used = ({i for n in graph.node for i in n.input} | {o.name for o in graph.output}) - {""}
    nodes, count = [], 0
    for node in graph.node:
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if not (node.op_type == "SkipLayerNormalization" and node.domain == MS_DOMAIN
                and not {outputs[1], outputs[2]} & used and len(node.input) >= 3):
            nodes.append(node)
            continue
        x, skip, gamma, beta, bias = (list(node.input) + [""] * 5)[:5]
        prefix = node.name or outputs[0]
        total = outputs[3] if outputs[3] in used else f"{prefix}/sum"
        first = f"{prefix}/skip_sum" if bias else total
        nodes.append(helper.make_node("Add", [x, skip], [first], name=f"{prefix}/Add"))
        if bias:  # after the skip Add: Add(Add(x, bias), skip) + LayerNormalization is fused back at load
            nodes.append(helper.make_node("Add", [first, bias], [total], name=f"{prefix}/AddBias"))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), [outputs[0]],
                                      name=f"{prefix}/LayerNorm", axis=-1,
                                      epsilon=_attributes(node).get("epsilon", 1e-12)))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def drop_dead(graph) -> None:
    """Remove nodes whose outputs nothing reads (the Concats that built packed weights), then unused initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        live = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    used = {i for n in graph.node for i in n.input} | outputs
    live_inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live_inits)


class CpuKernelRewrites:
    """After the fusions, swap two fused encoder ops for what onnxruntime's CPU kernels run faster
    (measured above): Attention -> MatMul + Split + MultiHeadAttention with the
    attention bias floored (no denormal softmax on padded input), and SkipLayerNormalization ->
    Add + LayerNormalization. Exact up to fp32 summation order; the parity check decides."""

    name = "cpu-kernel-rewrites"

    def __call__(self, model) -> PassResult:
        ir = _ir()
        proto = ir.to_proto(model)
        counts = {"attention_unpacked": unpack_attention(proto), "skip_layer_norm_split": split_skip_layer_norm(proto)}
        if not any(counts.values()):
            ops = op_histogram(model)
            return PassResult(model, False, {**counts, "ops_before": ops, "ops_after": ops})
        rewritten = ir.from_proto(proto)
        return PassResult(rewritten, True, {**counts, "ops_before": op_histogram(model),
                                            "ops_after": op_histogram(rewritten)})

