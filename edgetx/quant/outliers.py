"""Activation outliers, and the fp32 graph that dynamic int8 quantizes.

`prepare` writes the graph a dynamic int8 scheme quantizes: onnxruntime's fused encoder ops rewritten
for its CPU int8 path (edgetx.passes.cpu_kernels: the fused Attention unpacked, SkipLayerNormalization
split) and, optionally (`outliers`), a calibrated treatment of activation outlier channels (the
`OutlierTreatment` pass, given what calibration chose per MatMul). The graph edits are onnx_ir passes;
files are read and written through edgetx.passes.files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgetx.passes import files
from edgetx.passes.base import GraphPass, PassResult, add_initializer, ir, run
from edgetx.passes.cpu_kernels import SplitSkipLayerNorm, UnpackAttention
from edgetx.runtimes.backend import REFERENCE_BACKEND
from onnx_ir.passes.common import RemoveUnusedNodesPass  # after edgetx.passes: its error when onnx-ir is missing


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


def _is_initializer(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer()


def _weight_matmuls(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "MatMul" and len(n.inputs) == 2
            and _is_initializer(n.inputs[1]) and n.inputs[0] is not None and not _is_initializer(n.inputs[0])
            and not (n.name or "").endswith(OUTLIER_SUFFIX)]


def _weight(node: ir.Node) -> np.ndarray:
    return node.inputs[1].const_value.numpy().astype(np.float32)


def capture_inputs(model: ir.Model, feeds: list[dict[str, np.ndarray]], min_elements: int,
                   max_rows: int = 4096) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inputs of the weight MatMuls (2-D weights of >= min_elements) on `feeds`, from one fp32 run each:
    (rows x channels samples, at most `max_rows` evenly spaced; per channel max |x| over every row).
    onnxruntime runs a copy of `model` saved with those inputs as extra outputs (`model` is unchanged)."""
    from edgetx.runtimes.backend import SessionOptions, get_backend

    values = {}
    for node in _weight_matmuls(model):
        weight = node.inputs[1].const_value
        if len(weight.shape) == 2 and weight.size >= min_elements:
            values.setdefault(node.inputs[0].name, node.inputs[0])
    names = sorted(values)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    if names:
        outputs = model.graph.outputs
        extra = [values[name] for name in names if values[name] not in outputs]
        with tempfile.TemporaryDirectory(prefix="edgetx-inputs-") as tmp:
            outputs.extend(extra)
            try:
                path = files.save(model, Path(tmp) / "m.onnx")
            finally:
                del outputs[len(outputs) - len(extra):]
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


def choose_remedies(model: ir.Model, samples: dict[str, np.ndarray], ranges: dict[str, np.ndarray], simulate, *,
                    alphas: tuple[float, ...], threshold: float, max_channels: int) -> dict[str, dict]:
    """Per weight MatMul: {"remedy": "smooth"|"decompose"|"none", errors, alpha or channels}.
    `samples` are calibration inputs (rows x channels) of each MatMul input, `simulate(x, w)` returns the
    scheme's quantized-dequantized (x, w)."""
    choices = {}
    for node in _weight_matmuls(model):
        x, peak = samples.get(node.inputs[0].name), ranges.get(node.inputs[0].name)
        if x is None or peak is None:
            continue
        w = _weight(node)
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


class OutlierTreatment(GraphPass):
    """The weight MatMuls of `choices` (choose_remedies: by node name) rewritten with their remedy, from
    the calibration's per-channel input peaks `ranges` (by input name): smoothing puts a Mul before the
    MatMul and scales a new weight; decomposition also sends the outlier channels through a Gather and an
    fp32 MatMul (named ...OUTLIER_SUFFIX) added back to the int8 half's output. New initializers (shared
    weights are not touched); what nothing reads any more is removed."""

    name = "outlier-treatment"

    def __init__(self, choices: dict[str, dict], ranges: dict[str, np.ndarray]):
        super().__init__()
        self.choices, self.ranges = choices, ranges

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        treated: dict[str, list[str]] = {"smooth": [], "decompose": []}
        for node in _weight_matmuls(model):
            remedy = self.choices.get(node.name, {"remedy": "none"})
            if remedy["remedy"] == "none":
                continue
            x, y, p = node.inputs[0], node.outputs[0], node.name
            w = _weight(node)
            peak = self.ranges[x.name]
            new_nodes = []
            if remedy["remedy"] == "smooth":
                s = _smoothing(peak, w, remedy["alpha"])
                scale, weight = (1 / s).astype(np.float32), w * s[:, None]
            else:
                channels = np.array(remedy["channels"], np.int64)
                scale = np.ones(len(peak), np.float32)
                scale[channels] = 0
                weight = w * scale[:, None]
                gather = ir.node("Gather", [x, add_initializer(graph, f"{p}/outlier_channels", channels)], {"axis": -1},
                                 outputs=[ir.val(f"{p}/outliers")], name=f"{p}/outlier_Gather")
                outlier_weight = add_initializer(graph, f"{p}/outlier_weight", np.ascontiguousarray(w[channels]))
                new_nodes += [gather, ir.node("MatMul", [gather.outputs[0], outlier_weight],
                                              outputs=[ir.val(f"{p}/outlier_out")], name=p + OUTLIER_SUFFIX)]
            # (names unlike the quantizer's own: it appends _quantized, _scale, _zero_point to input names)
            mul = ir.node("Mul", [x, add_initializer(graph, f"{p}/remedy_factor", scale)],
                          outputs=[ir.val(f"{p}/remedy_input")], name=f"{p}/remedy_Mul")
            graph.insert_before(node, [*new_nodes, mul])
            node.replace_input_with(0, mul.outputs[0])
            node.replace_input_with(1, add_initializer(graph, f"{p}/remedy_weight", weight.astype(np.float32)))
            if remedy["remedy"] == "decompose":  # the int8 half's output renamed; the sum takes its name and uses
                total = ir.val(y.name, type=y.type, shape=y.shape)
                y.name = f"{p}/int8_out"
                y.replace_all_uses_with(total, replace_graph_outputs=True)
                graph.insert_after(node, ir.node("Add", [y, new_nodes[-1].outputs[0]], outputs=[total],
                                                 name=f"{p}/outlier_Add"))
            treated[remedy["remedy"]].append(p)
        if not any(treated.values()):
            return self.skipped(model, "no MatMul whose int8 error a remedy cut enough")
        RemoveUnusedNodesPass()(model)  # the fp32 weights replaced (unless another node shares them)
        return self.done(model, smoothed=len(treated["smooth"]), decomposed=len(treated["decompose"]))


def prepare(src: str | Path, dst: str | Path, *, attention: bool = True, skip_layer_norm: bool = True,
            outliers: dict | None = None, calibration: list[dict[str, np.ndarray]] | None = None,
            simulate=None, min_elements: int = 4096) -> dict | None:
    """Write `src` with the requested rewrites to `dst`, marked in its metadata; returns what was done.
    `outliers` ({"alphas", "threshold", "max_channels"}) needs `calibration` feeds and `simulate(x, w)`.
    A graph these rewrites already produced is left alone: None, and `dst` is not written."""
    import json

    from edgetx.errors import InputError

    model = files.load(src)
    if METADATA_KEY in model.metadata_props:
        return None
    if outliers and not calibration:
        raise InputError("handling activation outliers needs calibration data and none was given; the bundle's "
                         "quant.npz holds real text for it (use the scheme through `edgetx build`)")
    passes = ([UnpackAttention()] if attention else []) + ([SplitSkipLayerNorm()] if skip_layer_norm else [])
    model, log = run(model, passes)
    counts = {key: r[key] for r in log for key in ("attention_unpacked", "skip_layer_norm_split") if key in r}
    record: dict = {"attention_unpacked": counts.get("attention_unpacked", 0),
                    "skip_layer_norm_split": counts.get("skip_layer_norm_split", 0)}
    if outliers:
        samples, ranges = capture_inputs(model, calibration, min_elements)
        choices = choose_remedies(model, samples, ranges, simulate, **outliers)
        model, _ = run(model, [OutlierTreatment(choices, ranges)])
        record["smoothed"] = sorted(n for n, c in choices.items() if c["remedy"] == "smooth")
        record["decomposed"] = sorted(n for n, c in choices.items() if c["remedy"] == "decompose")
        record["outliers"] = choices
    summary = {k: v if isinstance(v, int) else len(v) for k, v in record.items() if k != "outliers"}
    model.metadata_props[METADATA_KEY] = json.dumps(summary)
    files.save(model, dst)
    return record
