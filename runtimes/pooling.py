"""Sentence-embedding pooling in numpy, as sentence-transformers defines it."""

from __future__ import annotations

import numpy as np

from edgetx.errors import BundleError

POOLING_MODES = ("mean", "cls", "max")


def pool(hidden: np.ndarray, attention_mask: np.ndarray, config: dict) -> np.ndarray:
    """(batch, seq, hidden) + (batch, seq) mask -> (batch, hidden) float32, per `config`:
    {"mode": "mean" | "cls" | "max", "normalize": bool}."""
    mode = config.get("mode", "mean")
    mask = attention_mask.astype(np.float32)[..., None]
    if mode == "mean":
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    elif mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = np.where(mask > 0, hidden, -np.inf).max(axis=1)
    else:
        raise BundleError(f"pooling mode {mode!r} is not supported (known: {', '.join(POOLING_MODES)})")
    if config.get("normalize", False):
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled.astype(np.float32)
