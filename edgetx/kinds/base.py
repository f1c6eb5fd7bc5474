"""The model-kind interface: everything the pipeline, the gates, parity, bench and the report need to know
about a kind of model, asked of one object instead of tested with `if kind == ...` around the code.

A kind is a small class registered with `@register_kind`; variation is class attributes and a few
methods. The defaults below treat a model generically (named tensors in, named tensors out, compared
value by value), so a new kind overrides only what it does differently:

- its I/O contract (`io_problem`) and the golden arrays its exporter stores;
- parity: `golden_feeds` (the representative input), `parity_checks`, `primary_output` (what the fp32
  tolerance is measured on), `outputs_agree` (two runs on the same input under a tolerance);
- fixed shapes: `fixed_samples` (inputs of exactly the fixed dims, from the golden data);
- quantization gates: `calibration_feeds`, `gate_metrics`, `gate_misses`, `gate_score`, `gate_summary`;
- timing: `time_graph` (graph-candidate selection), `bench` and `bench_rows` (edgetx bench);
- the report: `report_axes`, `report_accuracy`, `report_latency`;
- the build: `graph_passes` (kind-specific edits of the kept fp32 graph);
- runtime helpers (`helpers`: e.g. "generate", "embed") and tokenizer behaviour (`truncates_text`).

Torch-free: kinds run on a device as part of the runtime path.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgetx.errors import BundleError, InputError
from edgetx.verify import metrics
from edgetx.verify.report import Check

# run(feeds, output_names=None) -> {output name: array}: an edgetx Session's `run`, or a raw backend
# session's wrapped the same way (the gates run candidate files that are not in a bundle yet).
Run = Callable[..., dict[str, np.ndarray]]
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class ReportAxes:
    """How `edgetx report` plots a kind: what accuracy means, which way is better, what latency is."""

    accuracy: str
    higher_is_better: bool
    latency: str


@dataclass(frozen=True)
class BenchTable:
    """Rows of `edgetx bench` for a kind: a title, column headers, and one row of strings per line."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]


def stored_batch(inputs: list[dict], data: dict[str, np.ndarray], prefix: str) -> Feeds:
    """A batch stored as `{prefix}.{input name}` arrays (golden.npz, quant.npz)."""
    return {s["name"]: data[f"{prefix}.{s['name']}"] for s in inputs}


def distribution_misses(result: dict[str, float], tolerance: Any) -> list[str]:
    """A next-token gate's misses: mean KL over its bound, top-1 agreement under its (decoders, encoder-decoders)."""
    out = []
    if result["kld_mean"] > tolerance.max_kld:
        out.append(f"mean KL {result['kld_mean']:.4f} > {tolerance.max_kld} (by {result['kld_mean'] - tolerance.max_kld:.4f})")
    if result["top1"] < tolerance.min_top1:
        out.append(f"top-1 {result['top1']:.3f} < {tolerance.min_top1} (by {tolerance.min_top1 - result['top1']:.3f})")
    return out


def rows_per_run(model: dict, batch_size: int) -> int:
    """How many texts a runtime helper runs together: `batch_size`, or 1 when the model's own output depends on
    padding (measured in PyTorch at export: the manifest's model.padding), so that a text's answer never
    depends on the texts it is batched with."""
    return batch_size if (model.get("padding") or {}).get("invariant", True) else 1


def padding_note(model: dict) -> str:
    """For a rows-alone check's detail: that PyTorch itself answers differently inside a padded batch."""
    padding = model.get("padding") or {}
    if padding.get("invariant", True):
        return ""
    return f"; PyTorch's own answer moves by {padding['max_abs']:.2g} with padding, so rows run alone at run time"


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn()` in milliseconds after one untimed warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e3


def timed_ms(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Wall time of each of `repeats` calls of `fn()` in milliseconds, after `warmup` untimed ones."""
    samples = []
    for rep in range(warmup + repeats):
        started = time.perf_counter()
        fn()
        if rep >= warmup:
            samples.append((time.perf_counter() - started) * 1e3)
    return samples


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "min_ms": float(min(samples_ms)),
            "max_ms": float(max(samples_ms))}


class ModelKind:
    """One kind of model (causal LM, encoder, ...). Subclass, set the attributes, override what differs."""

    name: ClassVar[str] = ""  # the manifest's model.kind
    described_as: ClassVar[str] = ""  # "a causal-lm", "an encoder": how messages name it
    helpers: ClassVar[frozenset[str]] = frozenset()  # runtime helpers it offers (Generator: "generate", ...)
    default_schemes: ClassVar[tuple[str, ...]] = ()  # quantized variants a build adds by default
    default_fixed_dims: ClassVar[str] = "batch=1"  # fixed dims a pre-flight applies when none are given
    genai_model_type: ClassVar[str | None] = None  # onnxruntime-genai's model type, where genai runs the kind
    truncates_text: ClassVar[bool] = False  # its tokenizer cuts long texts to the context (encoders)
    score: ClassVar[str] = "one run of the golden input, median ms"  # what `time_graph`'s score_ms measures
    timing_columns: ClassVar[tuple[str, ...]] = ("batch_ms",)  # `time_graph` keys shown per graph candidate
    golden_input: ClassVar[str] = "golden"  # prefix of the golden input arrays (`{prefix}.{input name}`)
    eval_prefix: ClassVar[str] = "eval"  # quant.npz: held-out inputs the gates compare on
    calib_prefix: ClassVar[str] = "calib"  # quant.npz: calibration inputs
    # A model of several graphs (an encoder-decoder): the main graph's file name in a variant's folder, and the
    # other graphs' names (io.components, variant.components), each `{variant}/{name}.onnx`. Sessions open the
    # main graph; the kind reaches the others with `session.component(name)`.
    main_graph: ClassVar[str] = "model"
    components: ClassVar[tuple[str, ...]] = ()

    def graph_files(self, variant: str) -> dict[str, str]:
        """A variant's ONNX files by graph, the main one first: {"model": "fp32/model.onnx"} for one graph."""
        return {name: f"{variant}/{name}.onnx" for name in (self.main_graph, *self.components)}

    # --- the I/O contract -----------------------------------------------------------------------------

    def schemes_for(self, model: dict) -> tuple[str, ...]:
        """The schemes a build adds by default for a model with these facts (the manifest's model block)."""
        return self.default_schemes

    def io_problem(self, inputs: list[dict], outputs: list[dict]) -> str | None:
        """What in an I/O signature breaks this kind's graph contract, or None."""
        return None

    def component_io_problem(self, component: str, inputs: list[dict], outputs: list[dict]) -> str | None:
        """What in one of the other graphs' I/O signature (io.components) breaks the contract, or None."""
        return None if component in self.components else f"{self.described_as} has no {component!r} graph"

    # --- golden I/O and parity ------------------------------------------------------------------------

    def golden_feeds(self, inputs: list[dict], golden: dict[str, np.ndarray]) -> Feeds:
        """The representative golden input (explain runs on it; the default parity check replays it)."""
        return stored_batch(inputs, golden, self.golden_input)

    def golden_outputs(self, golden: dict[str, np.ndarray], outputs: list[dict]) -> dict[str, np.ndarray]:
        """PyTorch's answers to `golden_feeds`, by output name (`{prefix}.{output name}` arrays)."""
        return {s["name"]: golden[f"{self.golden_input}.{s['name']}"] for s in outputs
                if f"{self.golden_input}.{s['name']}" in golden}

    def primary_output(self, session: Any, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(PyTorch's, this session's) main output on the golden input: what the fp32 spread is measured on."""
        want = self.golden_outputs(golden, session.outputs)
        got = session.run(self.golden_feeds(session.inputs, golden), list(want))
        return (np.concatenate([want[k].ravel() for k in want]), np.concatenate([got[k].ravel() for k in want]))

    def parity_checks(self, session: Any, golden: dict[str, np.ndarray], tolerance: Any) -> list[Check]:
        """The parity checks of one loaded variant against the golden I/O under its tolerance."""
        want = self.golden_outputs(golden, session.outputs)
        got = session.run(self.golden_feeds(session.inputs, golden), list(want))
        ok, detail = self.outputs_agree(tolerance, want, got)
        diff = max((metrics.max_abs(want[k], got[k]) for k in want), default=0.0)
        return [Check("golden outputs", ok, diff, f"{', '.join(want)}: {detail}")]

    def alone_vs_batch(self, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        """PyTorch's answers for the first rows of the golden padded batch (inside the batch, and each row run
        alone) at real positions; None when the golden I/O has no rows run alone."""
        return None

    def padding_effect(self, golden: dict[str, np.ndarray], tolerance: Any) -> dict | None:
        """How much PyTorch's own answer for a row moves when it runs inside a padded batch rather than alone
        (the manifest's model.padding). Invariant when within the fp32 tolerance: the graph is then held to
        give each row the same answer either way; otherwise the runtime helpers run rows one at a time."""
        pair = self.alone_vs_batch(golden)
        if pair is None:
            return None
        diff = metrics.max_abs(*pair)
        return {"invariant": bool(diff <= tolerance.max_abs), "max_abs": diff}

    def outputs_agree(self, tolerance: Any, want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[bool, str]:
        """Two runs on the same input (fixed vs dynamic file, a backend vs ort-cpu) under `tolerance`:
        max |diff| for fp32, cosine per row of every output for quantized precisions."""
        if not all(np.isfinite(v).all() for v in got.values()):
            return False, "NaN or inf in the outputs"
        diff = max((metrics.max_abs(want[k], got[k]) for k in want), default=0.0)
        if tolerance.max_kld is None:
            return diff <= tolerance.max_abs, f"max |diff| {diff:.2e} (<= {tolerance.max_abs:.2e})"
        cosine = min(float(metrics.cosine(want[k].reshape(len(want[k]), -1), got[k].reshape(len(got[k]), -1)).min())
                     for k in want)
        return cosine >= tolerance.min_cosine, f"cosine min {cosine:.4f} (>= {tolerance.min_cosine:g})"

    def tolerance_label(self, tolerance: dict) -> str:
        """The bound a check is held to, for tables: max |diff| for fp32, the gate's bound when quantized."""
        if tolerance.get("max_kld") is None:
            return f"{tolerance['max_abs']:.0e}"
        return f"cos>={tolerance['min_cosine']:g}"

    # --- fixed shapes --------------------------------------------------------------------------------

    def fixed_samples(self, golden: dict[str, np.ndarray], reference: Any, dims: dict[str, int],
                      count: int) -> list[Feeds]:
        """`count` inputs of exactly `dims`, made from the golden data (the first is the canonical one)."""
        feeds = self.golden_feeds(reference.inputs, golden)
        batch = dims.get("batch", 1)
        sample = {}
        for spec in reference.inputs:
            value = feeds[spec["name"]]
            shape = [dims.get(d, d) if isinstance(d, str) else d for d in spec["shape"]]
            if not all(isinstance(d, int) for d in shape):
                raise InputError(f"input {spec['name']!r} has dims {spec['shape']} that {dims} does not fix")
            sample[spec["name"]] = np.resize(value, [batch, *shape[1:]] if shape else shape).astype(value.dtype)
        return [{k: np.roll(v, shift, axis=-1) if v.ndim else v for k, v in sample.items()} for shift in range(count)]

    # --- quantization gates ---------------------------------------------------------------------------

    def calibration_feeds(self, inputs: list[dict], data: dict[str, np.ndarray], *, reference: Run | None = None,
                          static: bool = False) -> list[Feeds]:
        """Calibration inputs from the bundle's quant data (static schemes may ask for more: `static`)."""
        return [stored_batch(inputs, data, self.calib_prefix)]

    def graph_calibration_feeds(self, graph: str, inputs: list[dict], data: dict[str, np.ndarray]) -> list[Feeds]:
        """A model of several graphs: calibration inputs of one graph (`inputs` its io inputs). By default there are
        none: an encoder-decoder's decoder sees what its encoder makes, which the quant data does not hold."""
        from edgetx.quant.schemes import NotApplicable

        raise NotApplicable(f"static schemes calibrate activations, which edgetx does not do across the graphs of "
                            f"{self.described_as} yet; weight-only and dynamic schemes apply")

    def sensitivity_feeds(self, inputs: list[dict], data: dict[str, np.ndarray]) -> list[Feeds]:
        """Held-out inputs on which each MatMul's quantization error is estimated."""
        return [stored_batch(inputs, data, self.eval_prefix)]

    def gate_metrics(self, reference: Run, candidate: Run, inputs: list[dict], data: dict[str, np.ndarray],
                     model: dict) -> dict[str, float]:
        """Gate metrics of `candidate` against the fp32 `reference` on the held-out data."""
        feeds = stored_batch(inputs, data, self.eval_prefix)
        want, got = reference(feeds), candidate(feeds)
        cosines = np.concatenate([metrics.cosine(want[k].reshape(len(want[k]), -1), got[k].reshape(len(got[k]), -1))
                                  for k in want])
        return {"cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min()), "rows": len(cosines)}

    def gate_misses(self, result: dict[str, float], tolerance: Any) -> list[str]:
        """What missed the gate, and by how much (empty = passed)."""
        out = []
        if result["cosine_mean"] < tolerance.min_cosine_mean:
            out.append(f"cosine mean {result['cosine_mean']:.5f} < {tolerance.min_cosine_mean} "
                       f"(by {tolerance.min_cosine_mean - result['cosine_mean']:.5f})")
        if result["cosine_min"] < tolerance.min_cosine:
            out.append(f"cosine min {result['cosine_min']:.5f} < {tolerance.min_cosine} "
                       f"(by {tolerance.min_cosine - result['cosine_min']:.5f})")
        return out

    def gate_score(self, result: dict[str, float]) -> float:
        """One number, lower is better: how the mixed-precision search ranks a node's damage."""
        return 1.0 - result["cosine_mean"]

    def gate_summary(self, result: dict[str, float]) -> str:
        """The gate metrics in one table cell."""
        return f"cosine mean {result['cosine_mean']:.5f}, min {result['cosine_min']:.5f}"

    # --- timing ----------------------------------------------------------------------------------------

    def time_graph(self, session: Any, golden: dict[str, np.ndarray], repeats: int = 3) -> dict[str, float]:
        """Milliseconds of a graph candidate; `score_ms` is what the selection minimises."""
        feeds = self.golden_feeds(session.inputs, golden)
        batch = median_ms(lambda: session.run(feeds), repeats)
        return {"batch_ms": batch, "score_ms": batch}

    def bench(self, session: Any, config: Any) -> dict:
        """`edgetx bench` of one loaded variant: latency percentiles of the golden input."""
        feeds = self.golden_feeds(session.inputs, session.bundle.golden())
        return {"latency": percentiles(timed_ms(lambda: session.run(feeds), config.warmup, config.repeats))}

    def bench_extras(self, bundle: Any, results: list[dict]) -> None:
        """Figures added to a whole bench run (decoders: the memory-bandwidth floor)."""

    def bench_rows(self, results: list[dict]) -> list[BenchTable]:
        """The tables `edgetx bench` prints for this kind's results."""
        rows = [(r["variant"], r["backend"], str(r["threads"]), f"{r['file_mb']:.1f}", f"{r['load_ms']:.0f}",
                 f"{r['latency']['p50_ms']:.2f} / {r['latency']['p90_ms']:.2f} / {r['latency']['p99_ms']:.2f}")
                for r in results]
        return [BenchTable(f"{self.name} bench", ("variant", "backend", "threads", "MB", "load ms", "p50/p90/p99 ms"),
                           rows)]

    # --- the report ------------------------------------------------------------------------------------

    def report_axes(self, gated: bool) -> ReportAxes:
        """The report's axes (`gated`: some variant has gate metrics to plot)."""
        return ReportAxes("output cosine vs fp32 (higher is better)", True, "p50 ms")

    def report_accuracy(self, gate: dict | None, reference_gates: list[dict], parity: dict | None) -> tuple[float, dict]:
        """(accuracy, extra figures) of a variant from its gate metrics (None for the fp32 reference, whose
        point is derived from the gates of the others, `reference_gates`)."""
        if gate is None:
            return 1.0, {}
        return gate["cosine_mean"], {"cosine min": gate["cosine_min"]}

    def report_latency(self, result: dict) -> tuple[float, dict]:
        """(latency ms, extra figures) from a stored bench result."""
        return result["latency"]["p50_ms"], {}

    # --- the build -----------------------------------------------------------------------------------

    graph_edits: ClassVar[str] = ""  # what `graph_passes` do, as a build stage's title ("" = nothing)

    def graph_passes(self) -> list:
        """Kind-specific passes (edgetx.passes.GraphPass) run on the kept fp32 graph before it is verified;
        the inputs a pass adds when it modifies the graph are in its `adds_inputs`."""
        return []


_KINDS: dict[str, ModelKind] = {}


def register_kind(cls: type[ModelKind]) -> type[ModelKind]:
    """Class decorator: make a kind known by its `name` (a later registration of the name replaces it)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _KINDS[cls.name] = cls()
    return cls


def known_kinds() -> dict[str, ModelKind]:
    return dict(_KINDS)


def get_kind(name: object, where: object = "") -> ModelKind:
    """The registered kind called `name`; else a BundleError naming the known ones."""
    if not isinstance(name, str):
        raise BundleError(f"{where}: model.kind must be a string such as {' or '.join(map(repr, _KINDS))}")
    if name not in _KINDS:
        raise BundleError(f"{where}: model kind {name!r} is not one this edgetx knows ({', '.join(_KINDS)}); "
                          "upgrade edgetx, or register the kind (edgetx.kinds.register_kind)")
    return _KINDS[name]


def require_helper(kind: ModelKind, helper: str, where: object) -> None:
    """Refuse a runtime helper (generate, embed, ...) on a kind that does not offer it, naming who does."""
    if helper in kind.helpers:
        return
    offering = [k.described_as for k in _KINDS.values() if helper in k.helpers]
    own = f" (this one offers {', '.join(sorted(kind.helpers))})" if kind.helpers else ""
    article = "an" if kind.name[:1] in "aeiou" else "a"
    raise InputError(f"{where} holds {article} {kind.name!r} model; {helper} needs "
                     f"{' or '.join(offering) or 'another kind'}{own}")
