"""The memory-bandwidth bound of decoding: how close a decoder variant runs to this machine's limit.

A decode step reads every weight once (and the KV cache so far) to produce one token, so it
cannot be faster than bytes-read / read-bandwidth. The bandwidth is measured here, per thread
count, with numpy reductions over a buffer much larger than the caches; the bytes come from the
variant's ONNX initializers (an embedding table read by Gather counts one row, not the table).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgetx.bundle import Bundle

BUFFER_BYTES = 256 * 1024 * 1024  # well past any last-level cache on a phone or a server core


def _read_kernels():
    """Reductions that stream memory with SIMD and little arithmetic; the fastest one counts."""
    return (np.sum, lambda x: np.bitwise_or.reduce(x.view(np.int64)))


def measure_read_bandwidth(threads: int = 1, repeats: int = 5, nbytes: int = BUFFER_BYTES) -> float:
    """Bytes per second this process reads with `threads` threads (best of `repeats`)."""
    buffer = np.ones(nbytes // 4, dtype=np.float32)  # ones, not empty: the pages must be real
    parts = np.array_split(buffer, threads)
    best = float("inf")
    with ThreadPoolExecutor(max_workers=threads) as pool:  # numpy reductions release the GIL
        for kernel in _read_kernels():
            for _ in range(repeats):
                started = time.perf_counter()
                list(pool.map(kernel, parts))
                best = min(best, time.perf_counter() - started)
    return buffer.nbytes / best


def weight_bytes_per_token(model_path: Path) -> int | None:
    """Bytes of initializers one decode step reads; None when the onnx package is not installed."""
    try:
        import onnx
        from onnx.helper import tensor_dtype_to_np_dtype
    except ImportError:
        return None
    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, index))
    total = 0
    for tensor in graph.initializer:
        size = int(np.prod(tensor.dims, dtype=np.int64)) * tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        uses = consumers.get(tensor.name, [])
        if uses and all(op == "Gather" and index == 0 for op, index in uses) and tensor.dims:
            size //= max(int(tensor.dims[0]), 1)  # an embedding lookup reads one row per token
        total += size
    return total


def kv_bytes_per_token(model: dict, context: int) -> int:
    """Bytes of fp32 KV cache one decode step reads at `context` cached positions."""
    return 2 * model["num_layers"] * model["num_kv_heads"] * model["head_dim"] * context * 4


def decode_bounds(bundle: Bundle, results: list[dict], bandwidth: dict[int, float],
                  default_threads: int = 1) -> list[dict]:
    """For each decoder bench result (in order): measured ms per decode step vs the bandwidth floor."""
    rows = []
    for result in results:
        latency = result.get("decode_token_latency") or {}
        threads = result["threads"] if isinstance(result["threads"], int) else default_threads
        if "p50_ms" not in latency:
            rows.append({"variant": result["variant"], "threads": result["threads"], "bound_ms": None,
                         "note": "no decode steps measured (-n 1)"})
            continue
        weights = weight_bytes_per_token(bundle.file(bundle.variant(result["variant"]).file))
        if weights is None:
            rows.append({"variant": result["variant"], "threads": result["threads"], "bound_ms": None,
                         "note": "weight bytes need the onnx package (pip install onnx)"})
            continue
        context = result["prompt_tokens"] + result["new_tokens"] // 2
        read = weights + kv_bytes_per_token(bundle.model, context)
        bw = bandwidth[threads]
        bound_ms = read / bw * 1e3
        rows.append({"variant": result["variant"], "threads": result["threads"], "weight_mb": weights / 1e6,
                     "kv_mb": (read - weights) / 1e6, "bandwidth_gb_s": bw / 1e9, "bound_ms": bound_ms,
                     "decode_ms": latency["p50_ms"], "x_bound": latency["p50_ms"] / bound_ms})
    return rows
