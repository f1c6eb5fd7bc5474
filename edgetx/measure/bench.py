"""`bench`: how fast a bundle's variants run on a backend, torch-free (runs on a device).

The timing loop is the model kind's (edgetx.kinds): decoders llama-bench style (`-p` prompt tokens, `-n`
generated tokens: time to first token, prefill and decode tokens/s, per-token p50/p90/p99, and the decode
step against the memory-bandwidth floor), encoders latency and throughput per batch size and sequence
length. Every kind gets here: load time, file size, peak RSS of the process (of the worker process, for backends
that run the model in one) and its growth while loading,
threads, warm-up and repetition counts. Results can be stored in the bundle's manifest.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

from edgetx.bundle import Bundle
from edgetx.kinds import kind_of
from edgetx.progress import task
from edgetx.runtimes.session import Session
from edgetx.runtimes.backend import REFERENCE_BACKEND


@dataclass
class BenchConfig:
    """What to measure; each model kind reads the settings that apply to it."""

    prompt_tokens: int = 128
    new_tokens: int = 64
    batch_sizes: tuple[int, ...] = (1, 8)
    seq_lens: tuple[int, ...] = (128,)
    warmup: int = 1
    repeats: int = 3
    decode_batch_sizes: tuple[int, ...] = ()  # decoders: also decode these many rows at once (aggregate tok/s)


def _rss_mb(pid: int | None = None) -> dict[str, float]:
    """Current and peak resident set size of this process, or of the worker `pid` (Linux /proc; empty elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in open(f"/proc/{pid or 'self'}/status")
                      if line.startswith(("VmRSS", "VmHWM")))
    except OSError:
        return {}
    return {k: int(v.split()[0]) / 1024 for k, v in fields.items()}


def _reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux >= 4.0), so each variant's peak is its own, not the process's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def bench(bundle: Bundle, variants: list[str] | None = None, backend: str = REFERENCE_BACKEND,
          threads: tuple[int | None, ...] = (None,), cfg: BenchConfig | None = None,
          memory_bound: bool = True) -> list[dict]:
    """One result per variant x thread count, plus the kind's figures over the whole run when
    `memory_bound` (decoders: each decode step against this machine's read bandwidth, edgetx.measure.roofline)."""
    cfg = cfg or BenchConfig()
    kind = kind_of(bundle)
    runs = [(name, t) for name in variants or list(bundle.variants) for t in threads]
    results = []
    with task(f"benchmarking on {backend}", len(runs)) as progress:
        for name, t in runs:
            progress.note(f"{name}, threads {t or 'default'}")
            variant = bundle.variant(name)
            _reset_peak_rss()
            before = _rss_mb()
            started = time.perf_counter()
            session = Session(bundle, variant=name, backend=backend, threads=t, verify_hashes=False)
            for component in kind.components:  # a model of several graphs loads them all
                session.component(component)
            load_ms = (time.perf_counter() - started) * 1e3
            worker = session.worker_pid  # a model run by a worker process: its memory, not this process's
            before = {} if worker else before
            after = _rss_mb(worker)
            measured = kind.bench(session, cfg)
            end = _rss_mb(worker)
            results.append({
                "variant": name, "precision": variant.precision, "backend": backend, "threads": t or "default",
                "file_mb": sum(bundle.file(f).stat().st_size for f in variant.files()) / 1e6, "load_ms": load_ms,
                "rss_mb": end.get("VmRSS"), "peak_rss_mb": end.get("VmHWM"),
                "load_rss_delta_mb": (after.get("VmRSS", 0) - before.get("VmRSS", 0)) if after else None,
                **({"rss_of": "worker process"} if worker else {}),
                "warmup": cfg.warmup, "repeats": cfg.repeats, "machine": platform.machine(), **measured})
            session.close()
            del session
            progress.advance()
    if memory_bound and results:
        kind.bench_extras(bundle, results)
    return results
