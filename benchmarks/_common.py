"""Helpers shared by the peer workers: one timing protocol for every side (numpy + stdlib only,
so this module imports in every peer virtualenv).

A worker is called as `python peer_X.py SPEC.json`; the spec names the task, the inputs (.npz
written by peers.py), the settings and where to write `RESULT.json` + `RESULT.npz`.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

MINILM_SHAPES: tuple[tuple[int, int], ...] = ((1, 128), (32, 128))


def log(message: str) -> None:
    """A progress line for the orchestrator, which relays it to edgetx's progress channel: workers run in
    the peers' own virtualenvs, without edgetx, so their channel is this prefixed line on stderr."""
    print(f"    {message}", file=sys.stderr, flush=True)


THREADS = 1  # set from the spec; used to judge how much CPU the timed code actually got


def load_spec() -> dict:
    global THREADS
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SPEC.json (written by benchmarks/peers.py)")
    spec = json.loads(Path(sys.argv[1]).read_text())
    THREADS = spec.get("threads", 1)
    return spec


class CpuShare:
    """Process CPU time / (wall time x threads) over a block: ~100% = the side had its cores to
    itself; much less = it was waiting for a CPU that something else was using (noisy timing)."""

    def __enter__(self) -> "CpuShare":
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.wall
        self.percent = 100 * (time.process_time() - self.cpu) / max(wall * THREADS, 1e-9)


def one_line(error: BaseException) -> str:
    """An exception as one line: type, message, and the innermost frame of the trace."""
    text = " ".join(str(error).split()) or type(error).__name__
    frames = traceback.extract_tb(error.__traceback__)
    where = f" [{Path(frames[-1].filename).name}:{frames[-1].lineno}]" if frames else ""
    return f"{type(error).__name__}: {text[:300]}{where}"


def dir_mb(path: str | os.PathLike, suffixes: tuple[str, ...] = (".onnx", ".onnx_data", ".data", ".safetensors")) -> float:
    """Size on disk of the model files in a folder (or of one file), in MB."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes)) / 1e6


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling + L2 normalisation, in numpy."""
    m = mask.astype(np.float32)[..., None]
    pooled = (hidden.astype(np.float32) * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return (pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


def time_call(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    """Median (and min/max) wall time of `fn()` in ms after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples)}


def bench_encoder(embed_batch: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], data: dict,
                  warmup: int, repeats: int) -> tuple[dict, np.ndarray]:
    """Latency for each MINILM_SHAPES and the pooled embeddings of every sentence.

    `embed_batch(input_ids, attention_mask, token_type_ids)` returns last_hidden_state (numpy)."""
    ids, mask, types = data["input_ids"], data["attention_mask"], data["token_type_ids"]
    timings = {}
    with CpuShare() as share:
        for batch, seq in MINILM_SHAPES:
            args = (ids[:batch, :seq], mask[:batch, :seq], types[:batch, :seq])
            timings[f"b{batch}_s{seq}"] = time_call(lambda: embed_batch(*args), warmup, repeats)
    timings["cpu_percent"] = share.percent
    chunks = [mean_pool(embed_batch(ids[i:i + 32], mask[i:i + 32], types[i:i + 32]), mask[i:i + 32])
              for i in range(0, len(ids), 32)]
    return timings, np.concatenate(chunks)


class DecoderSide(Protocol):
    """What a causal-LM side implements for `bench_decoder` (batch 1, greedy)."""

    def first(self, prompt: np.ndarray) -> int:
        """Run the prompt (1-D int64 ids) from an empty cache; return the first greedy token."""

    def next(self, token: int) -> int:
        """Feed `token` (the previous result) and return the next greedy token."""

    def teacher_logits(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), vocab) float32 logits of one forward pass over `ids` from an empty cache."""


def bench_decoder(side: DecoderSide, prompt: np.ndarray, new_tokens: int, warmup: int, repeats: int) -> dict:
    """TTFT (prefill + first token) and decode ms/token over `new_tokens` greedy tokens.

    Each repeat: one prefill, then new_tokens - 1 decode steps, each timed. Reported: medians over
    the repeats of TTFT and of the repeat's mean decode step, the median of all decode steps, and
    the tokens of the last repeat."""
    ttfts, per_rep, steps, tokens = [], [], [], []
    share = CpuShare().__enter__()
    for rep in range(warmup + repeats):
        started = time.perf_counter()
        token = side.first(prompt)
        ttft = (time.perf_counter() - started) * 1e3
        tokens, rep_steps = [token], []
        for _ in range(new_tokens - 1):
            started = time.perf_counter()
            token = side.next(token)
            rep_steps.append((time.perf_counter() - started) * 1e3)
            tokens.append(token)
        if rep >= warmup:
            ttfts.append(ttft)
            per_rep.append(statistics.mean(rep_steps) if rep_steps else float("nan"))
            steps += rep_steps
    share.__exit__()
    return {"cpu_percent": share.percent, "ttft_ms": statistics.median(ttfts), "ttft_min_ms": min(ttfts), "ttft_max_ms": max(ttfts),
            "decode_ms_per_token": statistics.median(per_rep), "decode_step_p50_ms": statistics.median(steps),
            "decode_step_p90_ms": float(np.percentile(steps, 90)), "tokens": [int(t) for t in tokens]}


def run_variants(spec: dict, tool: str, versions: dict, variants: list[tuple[str, Callable[[], tuple[dict, dict]]]],
                 setup_s: float = 0.0) -> None:
    """Run each variant's job (returns (row fields, arrays to save)); one failing variant does not stop
    the others. Writes spec['out'].json and spec['out'].npz."""
    rows, arrays = [], {}
    for name, job in variants:
        log(f"{tool} {spec['task']} {name}: running")
        started = time.perf_counter()
        try:
            fields, saved = job()
            rows.append({"tool": tool, "variant": name, "ok": True, **fields,
                         "seconds": round(time.perf_counter() - started, 1)})
            arrays.update({f"{name}/{k}": v for k, v in saved.items()})
        except Exception as error:  # report, never hide: the row carries the reason
            rows.append({"tool": tool, "variant": name, "ok": False, "error": one_line(error)})
            log(f"{tool} {spec['task']} {name}: FAILED {one_line(error)}")
            (Path(spec["out"] + f".{name}.trace.txt")).write_text(traceback.format_exc())
    np.savez(spec["out"] + ".npz", **arrays)
    Path(spec["out"] + ".json").write_text(json.dumps({"tool": tool, "versions": versions, "setup_s": setup_s,
                                                       "rows": rows}, indent=1))
