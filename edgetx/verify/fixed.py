"""Checks of fixed-shape files: a backend that loads a variant's fixed-shape copy (model_format
"onnx-fixed": NPUs, XNNPACK) cannot replay the golden I/O, whose shapes vary. Instead it runs the fixed
file and onnxruntime CPU runs the variant's dynamic file on the same inputs, built from the golden text at
exactly the fixed dims, and the variant's tolerance judges.
"""

from __future__ import annotations

import numpy as np

from edgetx.bundle import Bundle
from edgetx.runtimes.feeds import causal_feeds, empty_cache, next_cache
from edgetx.runtimes.session import Session
from edgetx.verify import metrics
from edgetx.verify.report import Check
from edgetx.verify.tolerances import Tolerance

FIXED_FORMAT = "onnx-fixed"  # the format name of a variant's fixed-shape copy
FIXED_CHECK = "vs ort-cpu at fixed dims"
FIXED_SAMPLES = 3  # inputs per fixed-shape check (the golden text, shifted)


def fixed_feeds(bundle: Bundle, dynamic: Session, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Inputs of exactly `dims`, from the bundle's golden text."""
    golden = bundle.golden()
    kind = bundle.model.get("kind")
    batch, seq = dims["batch"], dims["seq"]
    if kind == "encoder":
        real = golden["batch.input_ids"][golden["batch.attention_mask"].astype(bool)]
        ids = np.resize(real, (batch, seq)).astype(np.int64)
        values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return {s["name"]: values[s["name"]] for s in dynamic.inputs}
    past = dims.get("past", 0)
    tokens = np.resize(golden["prefill.input_ids"][0], past + seq)
    rows = np.tile(tokens, (batch, 1)).astype(np.int64)
    cache = empty_cache(dynamic.inputs, batch)
    if past:
        cache = next_cache(dynamic.run(causal_feeds(dynamic.inputs, rows[:, :past])), cache)
    return causal_feeds(dynamic.inputs, rows[:, past:], cache=cache)



def _fixed_samples(bundle: Bundle, reference: Session, dims: dict[str, int], count: int) -> list[dict[str, np.ndarray]]:
    """`count` inputs of exactly `dims` from the golden text (the first as fixed_shape.fixed_feeds builds it)."""
    samples = [fixed_feeds(bundle, reference, dims)]
    golden = bundle.golden()
    batch, seq, past = dims["batch"], dims["seq"], dims.get("past", 0)
    for shift in range(1, count):
        if bundle.model.get("kind") == "encoder":
            sample = dict(samples[0])
            sample["input_ids"] = np.roll(samples[0]["input_ids"], 7 * shift, axis=1)
        else:
            rows = np.tile(np.roll(np.resize(golden["prefill.input_ids"][0], past + seq), 7 * shift), (batch, 1))
            cache = empty_cache(reference.inputs, batch)
            if past:
                cache = next_cache(reference.run(causal_feeds(reference.inputs, rows[:, :past].astype(np.int64))), cache)
            sample = causal_feeds(reference.inputs, rows[:, past:].astype(np.int64), cache=cache)
        samples.append(sample)
    return samples


def verify_fixed_shape(bundle: Bundle, session: Session, tolerance: Tolerance, dims: dict[str, int],
                       threads: int | None = None, note: str = "") -> list[Check]:
    """The backend's run of the variant's fixed file vs ort-cpu running its dynamic file, on the same
    inputs at `dims`, under the variant's tolerance (see the module docstring)."""
    reference = Session(bundle, variant=session.variant.name, backend="ort-cpu", threads=threads)
    samples = _fixed_samples(bundle, reference, dims, FIXED_SAMPLES)
    wants = [reference.run(feeds) for feeds in samples]
    gots = [session.run(feeds) for feeds in samples]
    want = {k: np.concatenate([w[k] for w in wants]) for k in wants[0]}
    got = {k: np.concatenate([g[k] for g in gots]) for k in wants[0]}
    finite = all(np.isfinite(v).all() for v in got.values())
    diff = max(metrics.max_abs(want[k], got[k]) for k in want) if finite else float("inf")
    ok, detail = _agrees(bundle.model.get("kind"), tolerance, want, got, diff) if finite else \
        (False, "the backend returned NaN or inf")
    shape = ",".join(f"{k}={v}" for k, v in dims.items())
    return [Check(FIXED_CHECK, bool(ok), diff, f"{shape}, {len(samples)} inputs: {detail}{note}")]



def _agrees(kind: str, tolerance, want: dict, got: dict, diff: float) -> tuple[bool, str]:
    """Fixed vs dynamic outputs under the variant's tolerance; (passed, what was measured)."""
    if tolerance.max_kld is None:
        return diff <= tolerance.max_abs, f"max |diff| {diff:.2e} (<= {tolerance.max_abs:.2e})"
    if kind == "causal-lm":
        ok, _, detail = tolerance.compare_logits(want["logits"], got["logits"])
        return ok, detail
    hidden_want, hidden_got = want["last_hidden_state"], got["last_hidden_state"]
    cosine = float(metrics.cosine(hidden_want.reshape(-1, hidden_want.shape[-1]),
                                  hidden_got.reshape(-1, hidden_got.shape[-1])).min())
    return cosine >= tolerance.min_cosine, f"token cosine min {cosine:.4f} (>= {tolerance.min_cosine:g})"
