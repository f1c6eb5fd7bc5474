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
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

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


# --- activation outliers (calibrated) ----------------------------------------------------------------
#
# Dynamic int8 quantizes a MatMul's input per tensor, so one input channel far above the others (the
# well-known outlier channels of transformer hidden states: on MiniLM one channel reaches 28 where the
# median channel peaks at 1.6) leaves a handful of int8 levels for everything else. Two remedies, chosen
# per MatMul by the simulated int8 error of its output on the bundle's calibration text:
# - smoothing (SmoothQuant, Xiao et al. 2023): x @ W = (x / s) @ (s * W) with s = max|x|^a / max|W|^(1-a)
#   per input channel; one Mul before the MatMul;
# - decomposition (LLM.int8(), Dettmers et al. 2022): the few input channels above OUTLIER_THRESHOLD go
#   through a small fp32 MatMul, the rest through int8; a Mul (mask), a Gather, a MatMul and an Add.
# Decomposition costs more nodes, so it is chosen only where it halves the error smoothing leaves;
# smoothing only where it cuts the plain error by a fifth.

OUTLIER_SUFFIX = "/outlier_MatMul"  # the fp32 half of a decomposed MatMul: never quantized
METADATA_KEY = "edgetx.int8_graph"  # metadata of a graph these rewrites produced: not rewritten twice
DECOMPOSE_GAIN, SMOOTH_GAIN = 0.5, 0.8


def _weight_matmuls(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits and n.input[0] not in inits
            and not n.name.endswith(OUTLIER_SUFFIX)]


def capture_inputs(model_path: str | Path, feeds: list[dict[str, np.ndarray]], min_elements: int,
                   max_rows: int = 4096) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inputs of the weight MatMuls (2-D weights of >= min_elements) on `feeds`, from one fp32 run each:
    (rows x channels samples, at most `max_rows` evenly spaced; per channel max |x| over every row)."""
    import onnx

    from edgetx.explain import with_outputs
    from edgetx.runtimes.base import SessionOptions, get_backend

    model = onnx.load(str(model_path))
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    names = sorted({n.input[0] for n in _weight_matmuls(model)
                    if len(shapes[n.input[1]]) == 2 and int(np.prod(shapes[n.input[1]])) >= min_elements})
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    if names:
        with tempfile.TemporaryDirectory(prefix="edgetx-inputs-") as tmp:
            path = with_outputs(model, names, Path(tmp) / "m.onnx")
            session = get_backend("ort-cpu").create_session(path, SessionOptions())
            for feed in feeds:
                out = session.run(feed, names).outputs
                for name in names:
                    rows[name].append(out[name].reshape(-1, out[name].shape[-1]).astype(np.float32))
    samples, ranges = {}, {}
    for name, parts in rows.items():
        x = np.concatenate(parts)
        ranges[name] = np.abs(x).max(0)
        samples[name] = x[np.linspace(0, len(x) - 1, min(len(x), max_rows)).astype(int)]
    return samples, ranges


def _relative_error(exact: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm(exact - got) / max(float(np.linalg.norm(exact)), 1e-12))


def choose_remedies(model, samples: dict[str, np.ndarray], ranges: dict[str, np.ndarray], simulate, *,
                    alphas: tuple[float, ...], threshold: float, max_channels: int) -> dict[str, dict]:
    """Per weight MatMul: {"remedy": "smooth"|"decompose"|"none", errors, alpha or channels}.
    `samples` are calibration inputs (rows x channels) of each MatMul input, `simulate(x, w)` returns the
    scheme's quantized-dequantized (x, w)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    choices = {}
    for node in _weight_matmuls(model):
        x, peak = samples.get(node.input[0]), ranges.get(node.input[0])
        if x is None or peak is None:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        exact = x @ w

        def error(xs: np.ndarray, ws: np.ndarray) -> float:
            xq, wq = simulate(xs, ws)
            return _relative_error(exact, xq @ wq)

        plain = error(x, w)
        smooth = min((error(x / s, w * s[:, None]), a) for a in alphas for s in [_smoothing(peak, w, a)])
        top = np.argsort(-peak)[:max_channels]
        channels = np.sort(top[peak[top] > threshold])
        decomposed = float("inf")
        if len(channels):
            mask = np.ones(len(peak), np.float32)
            mask[channels] = 0
            xq, wq = simulate(x * mask, w * mask[:, None])
            decomposed = _relative_error(exact, xq @ wq + x[:, channels] @ w[channels])
        choice = {"remedy": "none", "error_plain": round(plain, 5), "error_smooth": round(smooth[0], 5),
                  "error_decompose": round(decomposed, 5) if len(channels) else None}
        if decomposed < DECOMPOSE_GAIN * min(plain, smooth[0]):
            choice.update(remedy="decompose", channels=[int(c) for c in channels])
        elif smooth[0] < SMOOTH_GAIN * plain:
            choice.update(remedy="smooth", alpha=smooth[1])
        choices[node.name] = choice
    return choices


def _smoothing(peak: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel divisor of x (multiplier of W's rows), geometric mean 1."""
    s = np.maximum(peak, 1e-5) ** alpha / np.maximum(np.abs(w).max(1), 1e-5) ** (1 - alpha)
    return (s / np.exp(np.log(s).mean())).astype(np.float32)


def apply_remedies(model, choices: dict[str, dict], ranges: dict[str, np.ndarray]) -> None:
    """Rewrite the MatMuls of `choices` in place (new initializers; shared weights are not touched)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        choice = choices.get(node.name, {"remedy": "none"})
        if choice["remedy"] == "none":
            nodes.append(node)
            continue
        x, y, p = node.input[0], node.output[0], node.name
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        peak = ranges[x]
        if choice["remedy"] == "smooth":
            s = _smoothing(peak, w, choice["alpha"])
            scale, weight = (1 / s).astype(np.float32), w * s[:, None]
        else:
            channels = np.array(choice["channels"], np.int64)
            scale = np.ones(len(peak), np.float32)
            scale[channels] = 0
            weight = w * scale[:, None]
            graph.initializer.extend([numpy_helper.from_array(channels, f"{p}/outlier_channels"),
                                      numpy_helper.from_array(np.ascontiguousarray(w[channels]), f"{p}/outlier_weight")])
            nodes.append(helper.make_node("Gather", [x, f"{p}/outlier_channels"], [f"{p}/outliers"],
                                          name=f"{p}/outlier_Gather", axis=-1))
            nodes.append(helper.make_node("MatMul", [f"{p}/outliers", f"{p}/outlier_weight"], [f"{p}/outlier_out"],
                                          name=p + OUTLIER_SUFFIX))
        # (names unlike the quantizer's own: it appends _quantized, _scale, _zero_point to input names)
        graph.initializer.extend([numpy_helper.from_array(scale, f"{p}/remedy_factor"),
                                  numpy_helper.from_array(weight.astype(np.float32), f"{p}/remedy_weight")])
        nodes.append(helper.make_node("Mul", [x, f"{p}/remedy_factor"], [f"{p}/remedy_input"], name=f"{p}/remedy_Mul"))
        node.input[0], node.input[1] = f"{p}/remedy_input", f"{p}/remedy_weight"
        nodes.append(node)
        if choice["remedy"] == "decompose":
            node.output[0] = f"{p}/int8_out"
            nodes.append(helper.make_node("Add", [f"{p}/int8_out", f"{p}/outlier_out"], [y], name=f"{p}/outlier_Add"))
    del graph.node[:]
    graph.node.extend(nodes)
    drop_dead(graph)


def prepare(src: str | Path, dst: str | Path, *, attention: bool = True, skip_layer_norm: bool = True,
            outliers: dict | None = None, calibration: list[dict[str, np.ndarray]] | None = None,
            simulate=None, min_elements: int = 4096) -> dict | None:
    """Write `src` with the requested rewrites to `dst`, marked in its metadata; returns what was done.
    `outliers` ({"alphas", "threshold", "max_channels"}) needs `calibration` feeds and `simulate(x, w)`.
    A graph these rewrites already produced is left alone: None, and `dst` is not written."""
    import json

    import onnx

    from edgetx.errors import InputError

    model = onnx.load(str(src))
    if any(p.key == METADATA_KEY for p in model.metadata_props):
        return None
    record: dict = {"attention_unpacked": unpack_attention(model) if attention else 0,
                    "skip_layer_norm_split": split_skip_layer_norm(model) if skip_layer_norm else 0}
    if outliers:
        if not calibration:
            raise InputError("handling activation outliers needs calibration data and none was given; the bundle's "
                             "quant.npz holds real text for it (use the scheme through `edgetx build`)")
        with tempfile.TemporaryDirectory(prefix="edgetx-int8-graph-") as tmp:
            onnx.save(model, str(Path(tmp) / "m.onnx"))
            samples, ranges = capture_inputs(Path(tmp) / "m.onnx", calibration, min_elements)
        choices = choose_remedies(model, samples, ranges, simulate, **outliers)
        apply_remedies(model, choices, ranges)
        record["smoothed"] = sorted(n for n, c in choices.items() if c["remedy"] == "smooth")
        record["decomposed"] = sorted(n for n, c in choices.items() if c["remedy"] == "decompose")
        record["outliers"] = choices
    summary = {k: v if isinstance(v, int) else len(v) for k, v in record.items() if k != "outliers"}
    model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(summary)))
    large = model.ByteSize() > 2**31 - 2**20  # protobuf's limit: keep the weights beside it
    onnx.save(model, str(dst), save_as_external_data=large, location=Path(dst).name + ".data" if large else None)
    return record
