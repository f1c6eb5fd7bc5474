"""Parity tolerances per precision: the one place that defines them.

fp32: onnxruntime and PyTorch run the same fp32 math with different kernels, summation
orders and thread splits. On the reference GPT their logits differ by ~1e-5 for logits of
magnitude ~10-30 (measured here: see the bundle's parity block). The budget is 1e-3 max-abs,
~50-100x that spread, so it flags a wrong graph (a wrong mask, position or cache is off by
0.1 or more) without flaking on kernel noise. Relative to the largest logit it is ~1e-4.
Encoders use the same max-abs on hidden states, and pooled embeddings must keep cosine
>= 0.99999 with PyTorch's (fp32 kernels agree to ~1e-7 in cosine).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Tolerance:
    max_abs: float  # largest allowed |a - b| over logits
    greedy_must_match: bool  # greedy tokens must be identical over all golden decode steps
    min_cosine: float  # smallest allowed cosine between pooled embeddings (encoders)
    method: str  # how the number was chosen (recorded in the manifest)

    def to_dict(self) -> dict:
        return asdict(self)


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(
        max_abs=1e-3,
        greedy_must_match=True,
        min_cosine=0.99999,
        method="~50-100x the measured PyTorch-vs-onnxruntime fp32 logit spread (~1e-5) on the reference GPT",
    ),
}


def tolerance_for(precision: str) -> Tolerance:
    if precision not in TOLERANCES:
        raise KeyError(f"no parity tolerance defined for precision {precision!r} "
                       f"(defined: {', '.join(TOLERANCES)})")
    return TOLERANCES[precision]
