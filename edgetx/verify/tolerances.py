"""Parity tolerances: the one place that defines them and how they are derived.

fp32 budgets are measured, not guessed. At build time the fp32 graph is run on onnxruntime CPU
under several kernel configurations (1 and 2 threads, all graph optimizations on and off) and
compared with PyTorch's golden outputs; the largest difference is the *spread* between two
correct fp32 implementations. The budget is `FP32_SPREAD_FACTOR` x that spread (never below
`FP32_FLOOR`), and the bundle records it with its method, so every later check of that bundle,
on any backend, uses the same number. Measured here on the reference GPT: spread ~1.3e-5 on
logits of magnitude ~20, budget ~1.3e-4; a wrong mask, position or cache is off by >= 0.1.

A spread over `FP32_MAX_RELATIVE_SPREAD` of the outputs' largest value is not rounding: the build is refused.

Encoders use the same budget on hidden states, and pooled embeddings must keep cosine
>= `MIN_COSINE_FP32` with PyTorch's.

Bundles without a recorded budget fall back to `DEFAULT_FP32` (1e-3, ~50-100x the spread seen
on the reference model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgetx.verify import metrics

FP32_SPREAD_FACTOR = 10.0
FP32_FLOOR = 1e-5  # below this, float32 rounding of logits of magnitude ~10 is already visible
# The spread measures rounding only while it is small against the outputs: correct fp32 graphs agree with PyTorch
# within ~1e-6 of the largest output value (reference GPT: 1.3e-5 on logits of ~20); a graph that computes
# something else on every configuration is refused rather than given a budget that fits its error.
FP32_MAX_RELATIVE_SPREAD = 1e-3
MIN_COSINE_FP32 = 0.99999
# `--explain`: a value is "diverged" when it differs by more than this fraction of its own
# scale (max |value|). Correct fp32 graphs agree to ~1e-6 of scale; a quantized MatMul or a
# perturbed weight moves its output by 1e-3..1e-1.
INTERMEDIATE_REL_TOL = 1e-4


@dataclass(frozen=True)
class Tolerance:
    precision: str
    max_abs: float  # largest allowed |a - b| over logits (decoders) or hidden states (encoders)
    greedy_must_match: bool  # greedy tokens identical over all golden decode steps
    min_cosine: float  # smallest allowed cosine of pooled embeddings (encoders)
    method: str  # how the numbers were chosen (recorded in the manifest)
    measured_spread: float | None = None
    # Quantized precisions are judged on distributions, not on max-abs: mean KL divergence of
    # the next-token distribution and top-1 agreement with the reference (None = not used).
    max_kld: float | None = None
    min_top1: float | None = None
    min_cosine_mean: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def compare_logits(self, ref: np.ndarray, got: np.ndarray) -> tuple[bool, float, str]:
        """(passed, max |diff|, detail) for two sets of logits (..., vocab) under this tolerance."""
        diff = metrics.max_abs(ref, got)
        if self.max_kld is None:
            return diff <= self.max_abs, diff, ""
        # Per check, only the KL bound: a few dozen positions are too few for top-1 to mean much
        # (near-ties flip); the gate enforces top-1 on the bundle's held-out text.
        kld = float(metrics.kl_divergence(ref, got).mean())
        top1 = metrics.top1_agreement(ref, got)
        return kld <= self.max_kld, diff, f"mean KL {kld:.2e} (<= {self.max_kld:g}), top-1 {top1:.3f}"

    @classmethod
    def from_dict(cls, data: dict) -> "Tolerance":
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if values.get("max_abs") is None:  # stored as null in strict JSON: no max-abs bound (judged by KL)
            values["max_abs"] = float("inf")
        return cls(**values)


DEFAULT_FP32 = Tolerance(
    precision="fp32", max_abs=1e-3, greedy_must_match=True, min_cosine=MIN_COSINE_FP32,
    method="default for bundles without a measured budget: ~50-100x the PyTorch-vs-onnxruntime fp32 "
           "spread (~1e-5) seen on the reference GPT",
)


# Gates for quantized variants (issue defaults): decoders by mean KL divergence and top-1
# agreement of the next-token distribution, encoders by cosine of pooled embeddings.
QUANTIZED: dict[str, Tolerance] = {
    "int8": Tolerance("int8", max_abs=float("inf"), greedy_must_match=False, min_cosine=0.99, max_kld=0.01,
                      min_top1=0.97, min_cosine_mean=0.995,
                      method="gate: mean KL <= 0.01 and top-1 >= 97% vs fp32 (decoders); cosine mean >= 0.995, "
                             "min >= 0.99 (encoders)"),
    "int4": Tolerance("int4", max_abs=float("inf"), greedy_must_match=False, min_cosine=0.98, max_kld=0.05,
                      min_top1=0.90, min_cosine_mean=0.99,
                      method="gate: mean KL <= 0.05 and top-1 >= 90% vs fp32 (decoders); cosine mean >= 0.99, "
                             "min >= 0.98 (encoders)"),
    "fp16": Tolerance("fp16", max_abs=float("inf"), greedy_must_match=False, min_cosine=0.9999, max_kld=1e-3,
                      min_top1=0.99, min_cosine_mean=0.99995,
                      method="gate: mean KL <= 1e-3 and top-1 >= 99% vs fp32 (decoders); cosine mean >= 0.99995, "
                             "min >= 0.9999 (encoders)"),
}


def from_spread(precision: str, spread: float, configurations: list[str]) -> Tolerance:
    """The budget for a precision given the measured spread between correct implementations."""
    if precision != "fp32":
        raise KeyError(f"no measured tolerance rule for precision {precision!r} (defined: fp32)")
    return Tolerance(
        precision="fp32", max_abs=max(FP32_SPREAD_FACTOR * spread, FP32_FLOOR), greedy_must_match=True,
        min_cosine=MIN_COSINE_FP32, measured_spread=spread,
        method=f"{FP32_SPREAD_FACTOR:g} x the largest difference from PyTorch over onnxruntime CPU "
               f"configurations ({', '.join(configurations)}), at least {FP32_FLOOR:g}",
    )


def tolerance_for(precision: str, recorded: dict | None = None) -> Tolerance:
    """The bundle's recorded budget for a variant if it has one, else the default."""
    if recorded:
        return Tolerance.from_dict(recorded)
    if precision == "fp32":
        return DEFAULT_FP32
    if precision in QUANTIZED:
        return QUANTIZED[precision]
    raise KeyError(f"no parity tolerance defined for precision {precision!r} (defined: fp32, {', '.join(QUANTIZED)})")
