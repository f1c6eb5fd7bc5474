"""Graph selection by measurement: fp32 graph candidates (lists of passes, edgetx.passes), each checked
against the golden I/O with the fp32 tolerance; those that pass are timed on the target backend and the
fastest is kept. A fused graph is not assumed faster: on a small model at one thread it can be slower.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetx.errors import EdgetxError
from edgetx.passes import _ir, run_passes
from edgetx.passes.cpu_kernels import CpuKernelRewrites
from edgetx.passes.gqa_padding import GqaPaddedBatches
from edgetx.passes.ort_fusions import OrtFusions
from edgetx.passes.ort_offline import OrtOffline

DECODE_TOKENS = 64  # a candidate's score: prefill of the golden prompt + this many decode steps
PADDING_CHECKS = {"padded batch", "padding invariance"}

CANDIDATES: dict[str, list] = {
    "unfused": [],
    "ort-fusions": [OrtFusions(), GqaPaddedBatches()],
    "ort-offline-extended": [OrtOffline("extended")],
    "ort-fusions+ort-offline-extended": [OrtFusions(), GqaPaddedBatches(), OrtOffline("extended")],
    "ort-fusions+cpu-kernel-rewrites": [OrtFusions(), GqaPaddedBatches(), CpuKernelRewrites()],
}



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


def time_session(session, golden: dict[str, np.ndarray], repeats: int = 3) -> dict[str, float]:
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


TIMING_ROUNDS = 3  # candidates are timed in turn, round after round: load that comes and goes hits them all


def _time_interleaved(sessions: dict, entries: dict[str, dict], golden: dict, timer: Callable,
                      progress: Callable[[str], None]) -> None:
    """Time every session round-robin and record each timing's median over the rounds. Timing one
    candidate after another lets a burst of other work on the machine pick the winner (measured: a
    fused SmolLM2 graph timed at 3x the unfused one while another job ran, 0.9x on a quiet host)."""
    samples: dict[str, list[dict]] = {name: [] for name in sessions}
    for round_ in range(TIMING_ROUNDS):
        for name, session in sessions.items():
            progress(f"timing {name} (round {round_ + 1} of {TIMING_ROUNDS})")
            samples[name].append(timer(session, golden))
    for name, runs in samples.items():
        entries[name].update({key: statistics.median(run[key] for run in runs) for key in runs[0]})
        entries[name]["timing_rounds"] = len(runs)


def select_graph(bundle, fp32_rel: str, write: Callable[[str, object], str], *, target: str = "ort-cpu",
                 candidates: dict[str, list] | None = None, timer: Callable = time_session,
                 threads: int | None = None, progress: Callable[[str], None] = lambda _: None) -> Selection:
    """Build each candidate from the bundle's fp32 graph, keep the fastest that passes parity.

    `write(name, model)` stores a candidate in the bundle being built and returns its bundle path;
    `timer(session, golden)` returns timings with a `score_ms` (injectable for tests).
    """
    from edgetx.verify.parity import verify

    ir = _ir()
    golden = bundle.golden()
    tolerance = bundle.manifest["variants"]["fp32"].get("tolerance")
    results, sessions = [], {}
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
            sessions[name] = Session(bundle, variant=name, backend=target, threads=threads)
            entry["load_ms"] = (time.perf_counter() - started) * 1e3
        del bundle.manifest["variants"][name]
        results.append(entry)
    _time_interleaved(sessions, {r["name"]: r for r in results}, golden, timer, progress)
    sessions.clear()
    passing = [r for r in results if r.get("parity_passed")]
    if not passing:
        raise EdgetxError("no optimization candidate passed parity, not even the unfused graph: "
                          + "; ".join(f"{r['name']}: {r.get('failed_checks') or r.get('error')}" for r in results))
    winner = min(passing, key=lambda r: r["score_ms"])
    for r in results:
        r["kept"] = r is winner
    return Selection(winner["name"], target, results)
