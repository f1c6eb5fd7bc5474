"""How much each weight MatMul suffers when quantized alone: simulated quantization of its captured
input and weight against the exact product (the mixed-precision search's proxy ranking)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

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


def sensitivity(fp32_path: Path, s: Scheme, feeds: list[dict[str, np.ndarray]], backend: str = REFERENCE_BACKEND) -> list[tuple[str, float]]:
    """(node, relative output error when only its MatMul is quantized), most sensitive first."""
    import onnx
    from onnx import numpy_helper

    from edgetx.passes.expose import expose_file

    model = onnx.load(str(fp32_path))
    weights = {i.name: i for i in model.graph.initializer}
    targets = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and node.input[0] not in weights:
            targets.append((node.name, node.input[0], numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)))
    with tempfile.TemporaryDirectory(prefix="edgetx-sens-") as tmp:
        path = expose_file(fp32_path, sorted({t[1] for t in targets}), Path(tmp) / "m.onnx")
        session = get_backend(backend).create_session(path, SessionOptions())
        scores = {name: 0.0 for name, _, _ in targets}
        for feed in feeds:
            out = session.run(feed, sorted({t[1] for t in targets})).outputs
            for name, act, w in targets:
                x = out[act].reshape(-1, w.shape[0]).astype(np.float32)
                exact = x @ w
                xq, wq = _simulate(s, x, w)
                scores[name] += float(np.linalg.norm(exact - xq @ wq) / max(np.linalg.norm(exact), 1e-12))
    return sorted(scores.items(), key=lambda kv: -kv[1])

