"""Graph optimization: composable passes, and per-target selection by measurement.

Passes take an `onnx_ir` model and return a `PassResult` (the model, whether it changed, and
what: fusion counts, op histogram before and after):
- `OrtFusions`: onnxscript's optimizer (constant folding, dead code, shapes) and its onnxruntime
  fusion rewriter (SkipLayerNorm / SkipRMSNorm, RMSNorm, RotaryEmbedding, MultiHeadAttention /
  GroupQueryAttention with the KV cache, BiasGelu / FastGelu);
- `OrtOffline`: onnxruntime's own graph optimizer, saved to a file (what a session would do at load).

`select_graph` builds the candidates, checks each against the golden I/O with the fp32
tolerance, times the ones that pass on the target backend, and keeps the fastest. A fused
graph is not assumed faster: on a small model at one thread it can be slower.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetx.errors import EdgetxError

DECODE_TOKENS = 64  # a candidate's score: prefill of the golden prompt + this many decode steps
PADDING_CHECKS = {"padded batch", "padding invariance"}


def _ir():
    try:
        import onnx_ir as ir
    except ImportError:
        raise EdgetxError("graph optimization needs onnx-ir and onnxscript: pip install 'edgetx[export]'") from None
    return ir


def op_histogram(model) -> dict[str, int]:
    """Op type -> count over the main graph (domain-qualified for non-standard ops)."""
    counts = Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                     for node in model.graph)
    return dict(counts.most_common())


@dataclass
class PassResult:
    model: object  # onnx_ir.Model
    modified: bool
    details: dict = field(default_factory=dict)


class OrtFusions:
    """onnxscript's optimizer + onnxruntime fusion rewriter."""

    name = "ort-fusions"

    def __call__(self, model) -> PassResult:
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        before = op_histogram(model)
        model, counts = optimize_for_ort(model)
        fusions = {k: v for k, v in counts.items() if v}
        return PassResult(model, bool(fusions), {"fusions": fusions, "ops_before": before,
                                                 "ops_after": op_histogram(model)})


class OrtOffline:
    """onnxruntime's graph optimizer at a level, run once and saved (basic is portable across
    execution providers; extended adds CPU contrib ops)."""

    def __init__(self, level: str = "extended"):
        self.level = level
        self.name = f"ort-offline-{level}"

    def __call__(self, model) -> PassResult:
        import onnxruntime as ort

        ir = _ir()
        levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
        before = op_histogram(model)
        with tempfile.TemporaryDirectory(prefix="edgetx-ort-opt-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            ir.save(model, src)
            options = ort.SessionOptions()
            options.graph_optimization_level = levels[self.level]
            options.optimized_model_filepath = str(dst)
            options.log_severity_level = 3
            ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
            optimized = ir.load(dst)  # a single file: its weights are read into memory here
        return PassResult(optimized, True, {"ops_before": before, "ops_after": op_histogram(optimized)})


CANDIDATES: dict[str, list] = {
    "unfused": [],
    "ort-fusions": [OrtFusions()],
    "ort-offline-extended": [OrtOffline("extended")],
    "ort-fusions+ort-offline-extended": [OrtFusions(), OrtOffline("extended")],
}


def run_passes(model, passes: list) -> tuple[object, list[dict]]:
    """Apply passes in order; return the model and what each changed."""
    log = []
    for p in passes:
        result = p(model)
        model = result.model
        log.append({"pass": p.name, "modified": result.modified, **result.details})
    return model, log


def optimize_file(src: str | Path, dst: str | Path, candidate: str = "ort-fusions") -> list[dict]:
    """`edgetx optimize`: apply a candidate's passes to one ONNX file."""
    ir = _ir()
    if candidate not in CANDIDATES:
        raise EdgetxError(f"unknown optimization {candidate!r}; known: {', '.join(CANDIDATES)}")
    try:
        model = ir.load(src)
    except Exception as e:  # onnx_ir raises protobuf/OS errors for unreadable files
        raise EdgetxError(f"{src}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    model, log = run_passes(model, CANDIDATES[candidate])
    tmp = Path(f"{dst}.partial")
    ir.save(model, tmp)
    tmp.replace(dst)
    return log


# --- measured selection --------------------------------------------------------------------------

def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_session(session, golden: dict[str, np.ndarray], repeats: int = 5) -> dict[str, float]:
    """Milliseconds: decoders prefill of the golden prompt and one decode step (score = prefill +
    64 decode steps); encoders one golden batch (score = that)."""
    from edgetx.runtimes.feeds import causal_feeds, empty_cache, encoder_feeds, next_cache

    if session.model.get("kind") == "encoder":
        feeds = encoder_feeds(session.inputs, golden, "batch")
        batch = _median_seconds(lambda: session.run(feeds), repeats) * 1e3
        return {"batch_ms": batch, "score_ms": batch}
    prompt = golden["prefill.input_ids"]
    prefill_feeds = causal_feeds(session.inputs, prompt)
    prefill = _median_seconds(lambda: session.run(prefill_feeds), repeats) * 1e3
    cache = next_cache(session.run(prefill_feeds), empty_cache(session.inputs, 1))
    step_feeds = causal_feeds(session.inputs, prompt[:, -1:], cache=cache)
    decode = _median_seconds(lambda: session.run(step_feeds), repeats * 4) * 1e3
    return {"prefill_ms": prefill, "decode_ms": decode, "score_ms": prefill + DECODE_TOKENS * decode}


@dataclass
class Selection:
    winner: str
    target: str
    candidates: list[dict]

    def to_dict(self) -> dict:
        return {"target": self.target, "winner": self.winner, "score": f"prefill + {DECODE_TOKENS} decode steps "
                "(decoders) or one golden batch (encoders), median ms", "candidates": self.candidates}


def select_graph(bundle, fp32_rel: str, write: Callable[[str, object], str], *, target: str = "ort-cpu",
                 candidates: dict[str, list] | None = None, timer: Callable = time_session,
                 threads: int | None = None, progress: Callable[[str], None] = lambda _: None) -> Selection:
    """Build each candidate from the bundle's fp32 graph, keep the fastest that passes parity.

    `write(name, model)` stores a candidate in the bundle being built and returns its bundle path;
    `timer(session, golden)` returns timings with a `score_ms` (injectable for tests).
    """
    from edgetx.parity import verify

    ir = _ir()
    golden = bundle.golden()
    tolerance = bundle.manifest["variants"]["fp32"].get("tolerance")
    results = []
    for name, passes in (candidates or CANDIDATES).items():
        progress(name)
        entry: dict = {"name": name, "passes": [p.name for p in passes]}
        try:
            model, log = run_passes(ir.load(bundle.file(fp32_rel)), passes)
        except Exception as e:  # a pass that cannot handle this graph is a rejected candidate, not a crash
            entry.update(kept=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            results.append(entry)
            continue
        entry["log"] = log
        entry["file"] = write(name, model)
        bundle.manifest["variants"][name] = {"precision": "fp32", "file": entry["file"], "tolerance": tolerance}
        try:
            (report,) = verify(bundle, backend=target, variants=[name], threads=threads)
        except EdgetxError as e:  # e.g. onnxruntime rejects a graph the rewriter produced
            del bundle.manifest["variants"][name]
            entry.update(kept=False, parity_passed=False, error=str(e).splitlines()[0][:300])
            results.append(entry)
            continue
        entry["parity_passed"] = report.passed
        entry["parity_max_abs"] = report.max_abs
        entry["failed_checks"] = [f"{c.name}: max |diff| {c.max_abs:.3g} ({c.detail})"
                                  for c in report.checks if not c.passed]
        failed = [c.name for c in report.checks if not c.passed]
        if failed and set(failed) <= PADDING_CHECKS:
            # Right at batch 1 but wrong for padded batches (e.g. a fused GroupQueryAttention that
            # ignores attention_mask): never kept, but timed, so the manifest shows what it would gain.
            entry["restriction"] = "wrong for padded batches; correct unpadded"
        if report.passed or "restriction" in entry:
            from edgetx.runtimes.session import Session

            started = time.perf_counter()
            session = Session(bundle, variant=name, backend=target, threads=threads)
            entry["load_ms"] = (time.perf_counter() - started) * 1e3
            entry.update(timer(session, golden))
        del bundle.manifest["variants"][name]
        results.append(entry)
    passing = [r for r in results if r.get("parity_passed")]
    if not passing:
        raise EdgetxError("no optimization candidate passed parity, not even the unfused graph: "
                          + "; ".join(f"{r['name']}: {r.get('failed_checks') or r.get('error')}" for r in results))
    winner = min(passing, key=lambda r: r["score_ms"])
    for r in results:
        r["kept"] = r is winner
    return Selection(winner["name"], target, results)
