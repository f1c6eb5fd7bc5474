"""How much each weight MatMul suffers when quantized alone: simulated quantization of its captured
input and weight against the exact product (the mixed-precision search's proxy ranking)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgetx.passes.base import ir
from edgetx.quant.schemes import Scheme
from edgetx.runtimes.backend import REFERENCE_BACKEND, SessionOptions, get_backend


def _fake_quant(x: np.ndarray, bits: int, axis: int | None, symmetric: bool = False) -> np.ndarray:
    """Quantize-dequantize x to `bits` per slice along `axis` (None = whole tensor)."""
    levels = 2 ** bits - 1
    lo = x.min(axis=axis, keepdims=True) if axis is not None else x.min()
    hi = x.max(axis=axis, keepdims=True) if axis is not None else x.max()
    if symmetric:
        hi = np.maximum(np.abs(lo), np.abs(hi))
        lo = -hi
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    scale = np.where(hi - lo > 0, (hi - lo) / levels, 1.0)
    return np.round((x - lo) / scale) * scale + lo


def _simulate(s: Scheme, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if s.method == "fp16":
        return x.astype(np.float16).astype(np.float32), w.astype(np.float16).astype(np.float32)
    if s.method in ("dynamic", "static", "qdq"):
        bits = 16 if s.options.get("activation") == "QUInt16" else 8
        signed = s.options.get("weight_type", "QUInt8") == "QInt8"  # symmetric; reduce_range: 7 bits
        wbits = 7 if s.options.get("reduce_range") else 8
        return _fake_quant(x, bits, None), _fake_quant(w, wbits, 0 if s.options.get("per_channel", True) else None, signed)
    block = s.options.get("block_size", 32)  # weight-only: blocks along the reduction dim (rows of w)
    k = w.shape[0] - w.shape[0] % block
    blocks = w[:k].reshape(-1, block, w.shape[1])
    wq = w.copy()
    wq[:k] = _fake_quant(blocks, s.options["bits"], 1, s.options.get("symmetric", False)).reshape(k, w.shape[1])
    return x, wq


COLUMN_CHUNK = 8192  # output columns simulated at a time: an LM head's working copies stay a few hundred MB


def relative_error(s: Scheme, x: np.ndarray, w: np.ndarray) -> float:
    """|x @ w - xq @ wq| / |x @ w| (Frobenius) for one MatMul quantized in simulation. Computed over column
    chunks when the scheme quantizes each output column on its own (weight-only blocks, per-channel int8,
    fp16), so a [K, N] weight never has several full-size copies made of it; a per-tensor scheme needs
    the whole weight's range and takes it at once."""
    separable = s.method not in ("dynamic", "static", "qdq") or s.options.get("per_channel", True)
    step = COLUMN_CHUNK if separable else w.shape[1]
    error = norm = 0.0
    for start in range(0, w.shape[1], step):
        part = np.asarray(w[:, start : start + step], dtype=np.float32)
        exact = x @ part
        xq, wq = _simulate(s, x, part)
        error += float(np.square(exact - xq @ wq).sum(dtype=np.float64))
        norm += float(np.square(exact).sum(dtype=np.float64))
    return float(np.sqrt(error) / max(np.sqrt(norm), 1e-12))


def sensitivity(fp32_path: Path, s: Scheme, feeds: list[dict[str, np.ndarray]], backend: str = REFERENCE_BACKEND) -> list[tuple[str, float]]:
    """(node, relative output error when only its MatMul is quantized), most sensitive first.

    Memory stays near one model's weights: the graph is read without its weights, the captured inputs come
    from one session that is closed before any weight is read, and each weight is then read on its own from
    the file (onnx_ir reads external data lazily) and simulated in column chunks."""
    import onnx

    from edgetx.passes.expose import expose_file
    from edgetx.passes.files import load, release

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    targets = [(node.name, node.input[0], node.input[1]) for node in graph.node
               if node.op_type == "MatMul" and node.input[1] in weights and node.input[0] not in weights]
    del graph
    activations = sorted({act for _, act, _ in targets})
    with tempfile.TemporaryDirectory(prefix="edgetx-sens-") as tmp:
        path = expose_file(fp32_path, activations, Path(tmp) / "m.onnx")
        session = get_backend(backend).create_session(path, SessionOptions())
        captured = [session.run(feed, activations).outputs for feed in feeds]
        session.close()
        del session
    model = load(fp32_path)
    initializers = model.graph.initializers
    scores = {}
    for name, act, weight in targets:
        w = initializers[weight].const_value.numpy()
        scores[name] = sum(relative_error(s, out[act].reshape(-1, w.shape[0]).astype(np.float32), w)
                           for out in captured)
        del w
        if isinstance(initializers[weight].const_value, ir.ExternalTensor):  # its map, before the next weight's
            initializers[weight].const_value.release()
    release(model)
    return sorted(scores.items(), key=lambda kv: -kv[1])
