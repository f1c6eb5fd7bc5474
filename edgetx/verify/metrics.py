"""Comparison metrics between two sets of model outputs, in one place (numpy only).

Every function takes a reference `ref` and a candidate `got` of the same shape; logits are
(..., vocab). Values are computed in float64 so the metric itself adds no error.
"""

from __future__ import annotations

import numpy as np


def _f64(*arrays: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def max_abs(ref: np.ndarray, got: np.ndarray) -> float:
    """Largest |ref - got|; NaN or inf anywhere counts as infinitely far."""
    ref, got = _f64(ref, got)
    if ref.size == 0:
        return 0.0
    return float(np.nan_to_num(np.abs(ref - got), nan=np.inf).max())


def max_rel(ref: np.ndarray, got: np.ndarray, floor: float = 1e-6) -> float:
    """Largest |ref - got| relative to the reference's overall scale (max |ref|, at least `floor`).

    Scale-relative rather than element-wise, so values near zero do not blow it up."""
    ref64, _ = _f64(ref, got)
    scale = max(float(np.abs(ref64).max(initial=0.0)), floor)
    return max_abs(ref, got) / scale


def cosine(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis (one value per row), in float64 so that tiny vectors (a random model's
    1e-35 features) keep their direction; identical rows, zero ones included, are 1."""
    ref, got = _f64(ref, got)
    norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(got, axis=-1)
    cosines = (ref * got).sum(-1) / np.maximum(norms, np.finfo(np.float64).tiny)
    return np.where((ref == got).all(-1), 1.0, cosines)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    (x,) = _f64(logits)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, got_logits: np.ndarray) -> np.ndarray:
    """KL(ref || got) of the next-token distributions, in nats, one value per position."""
    p_log, q_log = log_softmax(ref_logits), log_softmax(got_logits)
    return (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)


def top1_agreement(ref_logits: np.ndarray, got_logits: np.ndarray) -> float:
    """Fraction of positions whose argmax token is the same."""
    ref_top, got_top = np.argmax(ref_logits, axis=-1), np.argmax(got_logits, axis=-1)
    return float(np.mean(ref_top == got_top)) if ref_top.size else 1.0


def token_agreement(ref_tokens: list[int] | np.ndarray, got_tokens: list[int] | np.ndarray) -> tuple[int, int | None]:
    """(number of leading tokens that agree, index of the first disagreement or None)."""
    for i, (a, b) in enumerate(zip(ref_tokens, got_tokens)):
        if int(a) != int(b):
            return i, i
    same = min(len(ref_tokens), len(got_tokens))
    return same, None if len(ref_tokens) == len(got_tokens) else same


def bits_per_token(logits: np.ndarray, next_ids: np.ndarray) -> float:
    """Mean cross-entropy in bits of `next_ids` under `logits` (bits/byte for a byte model)."""
    logp = log_softmax(logits)
    picked = np.take_along_axis(logp, np.asarray(next_ids)[..., None], axis=-1)[..., 0]
    return float(-picked.mean() / np.log(2))
