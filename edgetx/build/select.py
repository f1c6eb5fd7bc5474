"""Graph selection by measurement: fp32 graph candidates (lists of passes, edgetx.passes), each checked
against the golden I/O with the fp32 tolerance; those that pass are timed on the target backend and the
fastest is kept. A fused graph is not assumed faster: on a small model at one thread it can be slower.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from edgetx.errors import EdgetxError
from edgetx.kinds import kind_of
from edgetx import progress
from edgetx.passes import run
from edgetx.passes.files import EXTERNAL_DATA_BYTES, file_bytes, load, release, transform_file
from edgetx.passes.cpu_kernels import CpuKernelRewrites
from edgetx.passes.gqa_padding import GqaPaddedBatches
from edgetx.passes.ort_fusions import OrtFusions
from edgetx.passes.ort_offline import OrtOffline
from edgetx.runtimes.backend import REFERENCE_BACKEND

PADDING_CHECKS = {"padded batch", "padding invariance"}  # "rows alone" is unpadded: a failure there is no restriction

CANDIDATES: dict[str, list] = {
    "unfused": [],
    "ort-fusions": [OrtFusions(), GqaPaddedBatches()],
    "ort-offline-extended": [OrtOffline("extended")],
    "ort-fusions+ort-offline-extended": [OrtFusions(), GqaPaddedBatches(), OrtOffline("extended")],
    "ort-fusions+cpu-kernel-rewrites": [OrtFusions(), GqaPaddedBatches(), CpuKernelRewrites()],
}



def optimize_file(src: str | Path, dst: str | Path, candidate: str = "ort-fusions") -> list[dict]:
    """`edgetx optimize`: apply a candidate's passes to one ONNX file."""
    if candidate not in CANDIDATES:
        raise EdgetxError(f"unknown optimization {candidate!r}; known: {', '.join(CANDIDATES)}")
    return transform_file(src, dst, CANDIDATES[candidate])


# --- measured selection --------------------------------------------------------------------------

@dataclass
class Selection:
    winner: str
    target: str
    candidates: list[dict]
    score: str  # what a candidate's score_ms measures (the model kind's timing loop)
    timing: str = "interleaved"  # how candidates were timed (one at a time when their sessions would not fit)

    def to_dict(self) -> dict:
        return {"target": self.target, "winner": self.winner, "score": self.score, "timing": self.timing,
                "candidates": self.candidates}


TIMING_ROUNDS = 3  # candidates are timed in turn, round after round: load that comes and goes hits them all


def _time_interleaved(sessions: dict, entries: dict[str, dict], golden: dict, timer: Callable) -> None:
    """Time every session round-robin and record each timing's median over the rounds. Timing one
    candidate after another lets a burst of other work on the machine pick the winner (measured: a
    fused SmolLM2 graph timed at 3x the unfused one while another job ran, 0.9x on a quiet host)."""
    samples: dict[str, list[dict]] = {name: [] for name in sessions}
    with progress.task("timing graph candidates", TIMING_ROUNDS * len(sessions)) as timing:
        for round_ in range(TIMING_ROUNDS):
            for name, session in sessions.items():
                timing.note(f"{name} (round {round_ + 1} of {TIMING_ROUNDS})")
                samples[name].append(timer(session, golden))
                timing.advance()
    for name, runs in samples.items():
        entries[name].update({key: statistics.median(run[key] for run in runs) for key in runs[0]})
        entries[name]["timing_rounds"] = len(runs)


SESSION_OVERHEAD = 1.3  # an onnxruntime CPU session holds about this many times its weight bytes
BUILD_OVERHEAD = 2.0  # building a candidate: the pass's working copy, then its verification session


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _fits(nbytes: float) -> bool:
    free = available_memory()
    return free is None or nbytes < free


def select_graph(bundle, fp32_rel: str, write: Callable[[str, object], str], *, target: str = REFERENCE_BACKEND,
                 candidates: dict[str, list] | None = None, timer: Callable | None = None,
                 threads: int | None = None) -> Selection:
    """Build each candidate from the bundle's fp32 graph, keep the fastest that passes parity.

    `write(name, model)` stores a candidate in the bundle being built and returns its bundle path (for a model
    of several graphs, `write(name, model, graph)` for each of the others, whose fp32 files are the fp32
    variant's `components`: a candidate applies its passes to every graph);
    `timer(session, golden)` returns timings with a `score_ms` (default: the model kind's timing loop;
    injectable for tests).
    """
    from edgetx.verify.parity import verify

    kind = kind_of(bundle)
    timer = timer or kind.time_graph

    golden = bundle.golden()
    tolerance = bundle.variant("fp32").tolerance
    candidates = candidates or CANDIDATES
    others = dict(bundle.variant("fp32").components)  # the other graphs of a multi-graph model, if any
    weights = file_bytes(bundle.file(fp32_rel)) + sum(file_bytes(bundle.file(rel)) for rel in others.values())
    # Interleaved timing keeps every candidate's session open at once: only when they all fit in memory, and
    # never for a model with external data (over EXTERNAL_DATA_BYTES), whose sessions side by side would put
    # the build's peak RSS past its goal of 3x the fp32 weight bytes
    interleave = weights <= EXTERNAL_DATA_BYTES and _fits(len(candidates) * SESSION_OVERHEAD * weights)
    timing = "interleaved" if interleave else (
        f"one candidate at a time: {weights / 1e9:.1f} GB of weights is over the external-data threshold, where "
        f"{len(candidates)} sessions side by side would pass the peak-memory goal" if weights > EXTERNAL_DATA_BYTES
        else f"one candidate at a time: {len(candidates)} sessions of {weights / 1e9:.1f} GB of weights would not "
             "fit in the memory available")
    results, sessions = [], {}
    entries = {}
    for name, passes in candidates.items():
        progress.log.debug("graph candidate %s: %s", name, ", ".join(p.name for p in passes) or "as exported")
        entry: dict = {"name": name, "passes": [p.name for p in passes]}
        entries[name] = entry
        if not _fits(BUILD_OVERHEAD * weights):
            free = available_memory() or 0
            entry.update(kept=False, skipped=f"not built or timed: it needs about {BUILD_OVERHEAD * weights / 1e9:.1f}"
                         f" GB and {free / 1e9:.1f} GB is available")
            progress.log.warning("graph candidate %s: %s", name, entry["skipped"])
            results.append(entry)
            continue
        try:
            model, log = run(load(bundle.file(fp32_rel)), passes)
            entry["log"] = log
            entry["file"] = write(name, model)
            release(model)  # the pass's working copy: not kept beside the candidate's verification and timing sessions
            del model
            for graph, rel in others.items():  # the same passes on each other graph, saved the same way
                model, graph_log = run(load(bundle.file(rel)), passes)
                entry.setdefault("component_logs", {})[graph] = graph_log
                entry.setdefault("components", {})[graph] = write(name, model, graph)
                release(model)
                del model
        except Exception as e:  # a pass that cannot handle this graph is a rejected candidate, not a crash
            entry.pop("log", None)
            entry.update(kept=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            results.append(entry)
            continue
        bundle.manifest["variants"][name] = {"precision": "fp32", "file": entry["file"], "tolerance": tolerance,
                                             **({"components": entry["components"]} if others else {})}
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
            if not interleave:  # time it now and let its session (and its weights) go
                _time_interleaved(sessions, entries, golden, timer)
                for session in sessions.values():
                    session.close()
                sessions.clear()
                gc.collect()
        del bundle.manifest["variants"][name]
        results.append(entry)
    if sessions:
        _time_interleaved(sessions, entries, golden, timer)
    sessions.clear()
    passing = [r for r in results if r.get("parity_passed")]
    if not passing:
        raise EdgetxError("no optimization candidate passed parity, not even the unfused graph: "
                          + "; ".join(f"{r['name']}: {r.get('failed_checks') or r.get('error')}" for r in results))
    winner = min(passing, key=lambda r: r["score_ms"])
    for r in results:
        r["kept"] = r is winner
    return Selection(winner["name"], target, results, kind.score, timing)
