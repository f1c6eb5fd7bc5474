"""Which block grid a de-quantized weight matrix sits on, as MatMulNBits quants, scales and offsets.

Every GGUF type transformers reads de-quantizes each block of a weight row to `offset + scale * q` with
integer q (llama.cpp's `ggml-quants.c`, the `gguf` package's `quants.py`):

| GGUF type | per block | levels | here |
|---|---|---|---|
| Q4_0 | d * (q - 8) | 16, symmetric, 32 | 4-bit, block 32, no offset |
| Q4_1 | d * q + m | 16, 32 | 4-bit, block 32, offset |
| Q4_K | (d*sc) * q - dmin*m per 32-sub-block | 16 | 4-bit, block 32, offset |
| Q5_0 | d * (q - 16) | 32, symmetric, 32 | 8-bit, block 32, no offset |
| Q5_1, Q5_K | d * q + m, (d*sc) * q - dmin*m | 32, 32 | 8-bit, block 32, offset |
| Q6_K | (d*sc) * (q - 32) per 16-sub-block | 64, symmetric, 16 | 8-bit, block 16, no offset |
| Q8_0 | d * q | 255, symmetric, 32 | 8-bit, block 32, no offset |
| F16, BF16, F32 | - | - | no grid |

onnxruntime 1.32's CPU MatMulNBits (bits 4 and 8, block 16 or 32, accuracy_level 0) de-quantizes a
block to exactly `fl32(scale * (q - zero_point))` (measured by feeding it the identity matrix), the
zero point 8 (4-bit) or 128 (8-bit) when none is given. A symmetric block is then reproduced bit for bit
when `fl32(scale * k) == w` for its integers k: the same single rounding the GGUF de-quantizer does
(Q6_K's `d*sc*(q-32)` can round). A block with an offset is reproduced exactly when `scale * (q - zp)` and
the offset are fp32 numbers whose real sum is `w` (the graph adds the offset through the input's block
sums, edgetx.quant.grid). A weight whose blocks fit a grid only within 1% of a level (values snapped in
float arithmetic elsewhere) is still a fit, marked not exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-2  # a value may sit this far (in levels) off its grid point and still count as on it
MAX_DIVISOR = 8  # the smallest gap in a block may be up to this many grid steps (sparse levels)


@dataclass
class Fit:
    """A [K, N] weight as MatMulNBits quantizes it: per row n and block b of `block` inputs, the weight is
    `fl32(scale * (q - zero_point)) + offset` (offset None: zero everywhere)."""

    bits: int
    block: int
    q: np.ndarray  # uint8 [N, blocks, block], unpacked
    scale: np.ndarray  # float32 [N, blocks]
    offset: np.ndarray | None  # float32 [N, blocks]
    exact: bool  # the de-quantized weight equals the input bit for bit

    @property
    def zero_point(self) -> int:
        return 1 << (self.bits - 1)

    def dequantize(self) -> np.ndarray:
        """The [K, N] weight this fit stands for, in float64: what the kernel's fp32 block values and the
        offsets add up to."""
        n, blocks, block = self.q.shape
        body = (self.scale[..., None] * (self.q.astype(np.float32) - np.float32(self.zero_point))).astype(np.float32)
        values = body.astype(np.float64)
        if self.offset is not None:
            values = values + self.offset.astype(np.float64)[..., None]
        return values.reshape(n, blocks * block).T

    def packed(self) -> np.ndarray:
        """q as MatMulNBits stores it: [N, blocks, block * bits / 8] uint8, low nibble first at 4 bits."""
        if self.bits == 8:
            return self.q
        return self.q[..., 0::2] | (self.q[..., 1::2] << 4)


def fit(weight: np.ndarray, bits: int, block: int = 32) -> Fit | None:
    """The `bits`-bit grid with blocks of `block` values along K that the [K, N] fp32 `weight` sits on, or
    None when some block is off every such grid."""
    k, n = weight.shape
    if k % block:
        return None
    top, zp = (1 << bits) - 1, 1 << (bits - 1)
    sample = np.ascontiguousarray(weight[:, :4].T, dtype=np.float64).reshape(-1, k // block, block)
    if not (_steps(sample, top) > 0).all():  # float-trained weights fail here, at 4 rows' cost
        return None
    w32 = np.ascontiguousarray(weight.T, dtype=np.float32).reshape(n, k // block, block)
    x = w32.astype(np.float64)
    step = _steps(x, top)
    if not (step > 0).all():
        return None
    low = x.min(-1, keepdims=True)
    levels = np.rint((x - low) / step)

    # symmetric: w = scale * k with integer k, no offset (Q4_0, Q5_0, Q6_K, Q8_0): the grid through zero,
    # its scale negative where the GGUF's is (Q4_0 and Q5_0 take the sign of the largest value)
    step_sym = _steps(np.concatenate([x, np.zeros_like(x[..., :1])], -1), top)
    k_sym = np.rint(x / np.where(step_sym > 0, step_sym, 1.0))
    fits_up = (k_sym.min(-1, keepdims=True) >= -zp) & (k_sym.max(-1, keepdims=True) <= top - zp)
    fits_down = (-k_sym.max(-1, keepdims=True) >= -zp) & (-k_sym.min(-1, keepdims=True) <= top - zp)
    sign = np.where(fits_up, 1.0, -1.0)
    k_sym *= sign
    sym = ((step_sym > 0) & (fits_up | fits_down))[..., 0]
    scale_sym, sym_exact = _exact_scale(w32, k_sym, sign * step_sym)

    # with an offset: w = scale * (q - zp) + offset; 8-bit grids of up to 128 levels put q - zp at the level
    base = zp if bits == 8 and levels.max() + zp <= top else 0
    q_asym = levels + base
    scale_asym = step.astype(np.float32)
    offset_asym = low + (zp - base) * step
    body = scale_asym.astype(np.float64) * (q_asym - zp)
    asym_exact = ((scale_asym.astype(np.float64) == step)[..., 0]
                  & (body.astype(np.float32).astype(np.float64) == body).all(-1)
                  & (offset_asym.astype(np.float32).astype(np.float64) == offset_asym)[..., 0]
                  & (body + offset_asym.astype(np.float32).astype(np.float64) == x).all(-1))

    use_sym = sym & (sym_exact | ~asym_exact)  # symmetric when it is exact, or when neither is
    q = np.where(use_sym[..., None], k_sym + zp, q_asym).astype(np.uint8)
    scale = np.where(use_sym, scale_sym, scale_asym[..., 0]).astype(np.float32)
    offset = np.where(use_sym, 0.0, offset_asym[..., 0]).astype(np.float32)
    exact = bool(np.where(use_sym, sym_exact, asym_exact).all())
    return Fit(bits, block, q, scale, offset if offset.any() else None, exact)


def _steps(x: np.ndarray, top: int) -> np.ndarray:
    """Per block of `x` [N, blocks, size], the step of the grid of at most `top` + 1 levels from the block's
    minimum that holds every value (within TOLERANCE), or 0 where there is none."""
    low, high = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    gaps = np.diff(np.sort(x, -1), axis=-1)
    distinct = gaps > 1e-6 * np.maximum(high - low, 1e-30)
    step0 = np.where(distinct, gaps, np.inf).min(-1, keepdims=True)  # a grid's smallest gap is a multiple of its step
    step0 = np.where(np.isfinite(step0), step0, np.where(low != 0, np.abs(low), 1.0))  # a constant block
    step = np.zeros_like(step0)
    for divisor in range(1, MAX_DIVISOR + 1):  # sparse levels: the smallest gap may span several steps
        trial = step0 / divisor
        levels = (x - low) / trial
        good = (np.abs(levels - np.rint(levels)).max(-1, keepdims=True) <= TOLERANCE) \
            & (levels.max(-1, keepdims=True) <= top + TOLERANCE) & (step == 0)
        step = np.where(good, trial, step)
        if (step > 0).all():
            break
    return step


def _exact_scale(w32: np.ndarray, k: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block, an fp32 scale s with fl32(s * k) == w for every value (the GGUF's own scale, found from
    the largest |k| and its neighbours one and two ulps away), and whether one was found; else the step."""
    j = np.abs(k).argmax(-1)[..., None]
    kj = np.take_along_axis(k, j, -1)
    wj = np.take_along_axis(w32, j, -1).astype(np.float64)
    zero = kj == 0  # an all-zero block: any scale
    guess = np.where(zero, 1.0, wj / np.where(zero, 1.0, kj)).astype(np.float32)
    kf = k.astype(np.float32)
    best, found = step.astype(np.float32)[..., 0], np.zeros(k.shape[:-1], bool)
    up = np.nextafter(guess, np.float32(np.inf))
    down = np.nextafter(guess, np.float32(-np.inf))
    candidates = [guess, up, down, np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))]
    for candidate in candidates:
        good = ((candidate * kf) == w32).all(-1) & ~found
        best = np.where(good, candidate[..., 0], best)
        found |= good
    return best, found
