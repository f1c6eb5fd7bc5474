"""`bench`: how fast a bundle's variants run on a backend, torch-free (runs on a device).

Decoders (llama-bench style: `-p` prompt tokens, `-n` generated tokens): model load time, time to
first token, prefill tokens/s, decode tokens/s and per-token latency p50/p90/p99. Encoders:
latency p50/p90/p99 and throughput per batch size and sequence length. All: file size, peak RSS
of the process and its growth while loading, threads, warm-up and repetition counts, and the
spread (min/max) across repetitions. Results can be stored in the bundle's manifest.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass

import numpy as np

from edgetx.bundle import Bundle
from edgetx.errors import InputError
from edgetx.measure.roofline import decode_bounds, measure_read_bandwidth
from edgetx.runtimes.feeds import causal_feeds, empty_cache, next_cache
from edgetx.runtimes.session import Session


@dataclass
class BenchConfig:
    prompt_tokens: int = 128
    new_tokens: int = 64
    batch_sizes: tuple[int, ...] = (1, 8)
    seq_lens: tuple[int, ...] = (128,)
    warmup: int = 1
    repeats: int = 3


def _rss_mb() -> dict[str, float]:
    """Current and peak resident set size of this process (Linux /proc; empty elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "VmHWM")))
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


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    p50, p90, p99 = np.percentile(samples_ms, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "min_ms": float(min(samples_ms)),
            "max_ms": float(max(samples_ms))}


def _prompt(bundle: Bundle, length: int) -> np.ndarray:
    """`length` real tokens: the golden prompt, repeated as needed."""
    ids = bundle.golden()["prefill.input_ids"][0]
    return np.resize(ids, length)[None].astype(np.int64)


def bench_decoder(session: Session, cfg: BenchConfig) -> dict:
    limit = session.model["max_positions"]
    if cfg.prompt_tokens + cfg.new_tokens > limit:
        raise InputError(f"-p {cfg.prompt_tokens} + -n {cfg.new_tokens} exceeds this model's {limit} positions")
    prompt = _prompt(session.bundle, cfg.prompt_tokens)
    prefill_s, steps_ms = [], []
    for rep in range(cfg.warmup + cfg.repeats):
        started = time.perf_counter()
        out = session.run(causal_feeds(session.inputs, prompt, logits_to_keep=1))
        first = time.perf_counter() - started
        cache, token, step_ms = next_cache(out, empty_cache(session.inputs, 1)), int(out["logits"][0, -1].argmax()), []
        for _ in range(cfg.new_tokens - 1):
            started = time.perf_counter()
            out = session.run(causal_feeds(session.inputs, np.array([[token]], dtype=np.int64), cache=cache))
            step_ms.append((time.perf_counter() - started) * 1e3)
            cache, token = next_cache(out, cache), int(out["logits"][0, -1].argmax())
        if rep >= cfg.warmup:
            prefill_s.append(first)
            steps_ms += step_ms
    ttft = statistics.median(prefill_s)
    decode = _percentiles(steps_ms) if steps_ms else {}
    return {"prompt_tokens": cfg.prompt_tokens, "new_tokens": cfg.new_tokens,
            "time_to_first_token_ms": ttft * 1e3, "ttft_min_ms": min(prefill_s) * 1e3,
            "ttft_max_ms": max(prefill_s) * 1e3, "prefill_tokens_per_s": cfg.prompt_tokens / ttft,
            "decode_tokens_per_s": 1e3 / statistics.mean(steps_ms) if steps_ms else None,
            "decode_token_latency": decode}


def bench_encoder(session: Session, cfg: BenchConfig) -> dict:
    golden = session.bundle.golden()
    real_tokens = golden["batch.input_ids"][golden["batch.attention_mask"].astype(bool)]  # real sentences' ids
    rows = []
    for batch in cfg.batch_sizes:
        for seq in cfg.seq_lens:
            seq = min(seq, session.model["max_positions"])
            feeds = {s["name"]: (np.resize(real_tokens, (batch, seq)) if s["name"] == "input_ids"
                                 else np.ones((batch, seq)) if s["name"] == "attention_mask"
                                 else np.zeros((batch, seq))).astype(np.int64) for s in session.inputs}
            samples = []
            for rep in range(cfg.warmup + cfg.repeats):
                started = time.perf_counter()
                session.run(feeds)
                if rep >= cfg.warmup:
                    samples.append((time.perf_counter() - started) * 1e3)
            stats = _percentiles(samples)
            rows.append({"batch": batch, "seq": seq, **stats, "sequences_per_s": batch * 1e3 / stats["p50_ms"]})
    return {"batches": rows}


def bench(bundle: Bundle, variants: list[str] | None = None, backend: str = "ort-cpu",
          threads: tuple[int | None, ...] = (None,), cfg: BenchConfig | None = None,
          memory_bound: bool = True) -> list[dict]:
    """One result per variant x thread count. Decoder results also get `memory_bound`: the decode
    step time against this machine's measured read bandwidth (see edgetx.measure.roofline)."""
    cfg = cfg or BenchConfig()
    results = []
    for name in variants or list(bundle.variants):
        variant = bundle.variant(name)
        for t in threads:
            _reset_peak_rss()
            before = _rss_mb()
            started = time.perf_counter()
            session = Session(bundle, variant=name, backend=backend, threads=t, verify_hashes=False)
            load_ms = (time.perf_counter() - started) * 1e3
            after = _rss_mb()
            kind = bundle.model.get("kind")
            measured = bench_decoder(session, cfg) if kind == "causal-lm" else bench_encoder(session, cfg)
            end = _rss_mb()
            results.append({
                "variant": name, "precision": variant.precision, "backend": backend, "threads": t or "default",
                "file_mb": bundle.file(variant.file).stat().st_size / 1e6, "load_ms": load_ms,
                "rss_mb": end.get("VmRSS"), "peak_rss_mb": end.get("VmHWM"),
                "load_rss_delta_mb": (after.get("VmRSS", 0) - before.get("VmRSS", 0)) if after else None,
                "warmup": cfg.warmup, "repeats": cfg.repeats, "machine": platform.machine(), **measured})
            del session
    if memory_bound and bundle.model.get("kind") == "causal-lm" and results:
        add_memory_bound(bundle, results)
    return results


def add_memory_bound(bundle: Bundle, results: list[dict]) -> None:
    """Attach each decoder result's bandwidth floor (bytes read per token / read bandwidth)."""
    counts = sorted({r["threads"] if isinstance(r["threads"], int) else (os.cpu_count() or 1) for r in results})
    bandwidth = {t: measure_read_bandwidth(t) for t in counts}
    for result, row in zip(results, decode_bounds(bundle, results, bandwidth, default_threads=os.cpu_count() or 1)):
        result["memory_bound"] = row
