"""Activation outliers, and the fp32 graph that dynamic int8 quantizes.

`prepare` writes the graph a dynamic int8 scheme quantizes: onnxruntime's fused encoder ops rewritten
for its CPU int8 path (edgetx.passes.cpu_kernels: the fused Attention unpacked, SkipLayerNormalization
split) and, optionally (`outliers`), a calibrated treatment of activation outlier channels.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgetx.passes.cpu_kernels import drop_dead, split_skip_layer_norm, unpack_attention
from edgetx.runtimes.backend import REFERENCE_BACKEND


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

    from edgetx.verify.explain import with_outputs
    from edgetx.runtimes.backend import SessionOptions, get_backend

    model = onnx.load(str(model_path))
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    names = sorted({n.input[0] for n in _weight_matmuls(model)
                    if len(shapes[n.input[1]]) == 2 and int(np.prod(shapes[n.input[1]])) >= min_elements})
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    if names:
        with tempfile.TemporaryDirectory(prefix="edgetx-inputs-") as tmp:
            path = with_outputs(model, names, Path(tmp) / "m.onnx")
            session = get_backend(REFERENCE_BACKEND).create_session(path, SessionOptions())
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
