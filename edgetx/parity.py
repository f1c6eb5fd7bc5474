"""Parity: does a variant, on a backend, give the answers PyTorch gave at export time?

For a causal LM, against the golden I/O stored in the bundle:
- prefill: logits at every prompt position within the precision's tolerance;
- greedy: the variant's own greedy decoding, with its KV cache, picks the same tokens as
  PyTorch did over every golden decode step, with logits within tolerance;
- cache == recompute: the cached decode logits equal one full pass over the same tokens;
- padded batch: a left-padded batch gives each row's logits within tolerance.
For an encoder: hidden states and pooled embeddings (cosine) of a padded batch of real
sentences, and padding invariance (each sentence alone gives the batch's embedding).
Torch-free: runs through the same `Session` that apps use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgetx.bundle import Bundle
from edgetx.errors import BundleError
from edgetx.runtimes.generate import empty_cache, next_cache
from edgetx.runtimes.session import Session
from edgetx.runtimes.pooling import pool
from edgetx.tolerances import Tolerance, tolerance_for


@dataclass
class Check:
    name: str
    passed: bool
    max_abs: float | None = None
    detail: str = ""


@dataclass
class ParityReport:
    variant: str
    backend: str
    precision: str
    tolerance: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks if c.max_abs is not None), default=0.0)

    def to_dict(self) -> dict:
        return {"variant": self.variant, "backend": self.backend, "precision": self.precision,
                "passed": self.passed, "max_abs": self.max_abs, "tolerance": self.tolerance,
                "checks": [asdict(c) for c in self.checks]}


def _feeds(session: Session, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray,
           cache: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if cache is None:
        cache = empty_cache(session.inputs, batch=input_ids.shape[0])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, **cache}


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.nan_to_num(diff, nan=np.inf).max())


def verify_causal_lm(session: Session, golden: dict[str, np.ndarray], max_abs: float) -> list[Check]:
    """The four causal-LM checks of the module docstring, on one loaded session."""
    checks: list[Check] = []
    prompt = golden["prefill.input_ids"]
    S = prompt.shape[1]
    out = session.run(_feeds(session, prompt, np.ones_like(prompt), np.arange(S, dtype=np.int64)[None], None))
    diff = _max_abs(out["logits"], golden["prefill.logits"])
    checks.append(Check("prefill", diff <= max_abs, diff, f"{S} prompt positions"))

    # Greedy decoding with the variant's own choices, feeding its own cache back.
    want_tokens, want_logits = golden["decode.tokens"], golden["decode.logits"]
    cache = next_cache(out, empty_cache(session.inputs, batch=1))
    token, got_tokens, step_logits, step_diffs = int(out["logits"][0, -1].argmax()), [], [], []
    for step in range(len(want_tokens)):
        got_tokens.append(token)
        pos = S + step
        out = session.run(_feeds(session, np.array([[token]], dtype=np.int64),
                                 np.ones((1, pos + 1), dtype=np.int64), np.array([[pos]], dtype=np.int64), cache))
        cache = next_cache(out, cache)
        step_logits.append(out["logits"][0, -1])
        if token == want_tokens[step]:
            step_diffs.append(_max_abs(out["logits"][0, -1], want_logits[step]))
        token = int(out["logits"][0, -1].argmax())
    first_mismatch = next((i for i, (a, b) in enumerate(zip(got_tokens, want_tokens)) if a != b), None)
    matched = first_mismatch is None and token == int(want_logits[-1].argmax())
    decode_diff = max(step_diffs, default=float("inf"))
    detail = (f"{len(want_tokens)} steps, all tokens identical" if matched else
              f"first differing token at step {first_mismatch if first_mismatch is not None else len(want_tokens)}")
    checks.append(Check("greedy decode", matched and decode_diff <= max_abs, decode_diff, detail))

    # The cached steps must equal one pass over prompt + fed tokens without a cache.
    full = np.concatenate([prompt, np.array([got_tokens], dtype=np.int64)], axis=1)
    T = full.shape[1]
    out = session.run(_feeds(session, full, np.ones_like(full), np.arange(T, dtype=np.int64)[None], None))
    diff = _max_abs(out["logits"][0, S:], np.stack(step_logits))
    checks.append(Check("cache == recompute", diff <= max_abs, diff, f"{len(got_tokens)} positions"))

    if "padded.input_ids" in golden:
        out = session.run(_feeds(session, golden["padded.input_ids"], golden["padded.attention_mask"],
                                 golden["padded.position_ids"], None))
        diff = _max_abs(out["logits"][:, -1], golden["padded.logits"])
        rows, width = golden["padded.input_ids"].shape
        checks.append(Check("padded batch", diff <= max_abs, diff, f"{rows} rows left-padded to {width}"))
    return checks


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.clip(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30, None)


def verify_encoder(session: Session, golden: dict[str, np.ndarray], tolerance: Tolerance) -> list[Check]:
    """Hidden states and pooled embeddings of a padded batch, and each row alone (padding invariance)."""
    names = [s["name"] for s in session.inputs]
    feeds = {n: golden[f"batch.{n}"] for n in names}
    mask = feeds["attention_mask"].astype(bool)
    hidden = session.run(feeds, ["last_hidden_state"])["last_hidden_state"]
    diff = _max_abs(hidden[mask], golden["batch.last_hidden_state"][mask])
    checks = [Check("hidden states", diff <= tolerance.max_abs, diff, f"{mask.shape[0]} sentences, real tokens")]
    pooling = session.model.get("pooling", {})
    embeddings = pool(hidden, feeds["attention_mask"], pooling)
    cosine = float(_cosines(embeddings, golden["batch.embeddings"]).min())
    diff = _max_abs(embeddings, golden["batch.embeddings"])
    checks.append(Check("embeddings", cosine >= tolerance.min_cosine and diff <= tolerance.max_abs, diff,
                        f"min cosine {cosine:.7f} ({pooling.get('mode', 'mean')} pooling"
                        f"{', normalized' if pooling.get('normalize') else ''})"))
    # Each row run alone, without padding, must give the batch's answer.
    rows = range(min(4, mask.shape[0]))
    alone = []
    for row in rows:
        length = int(mask[row].sum())
        single = {n: feeds[n][row : row + 1, :length] for n in names}
        out = session.run(single, ["last_hidden_state"])["last_hidden_state"]
        alone.append(pool(out, single["attention_mask"], pooling)[0])
    diff = _max_abs(np.stack(alone), golden["batch.embeddings"][list(rows)])
    checks.append(Check("padding invariance", diff <= tolerance.max_abs, diff,
                        f"{len(rows)} rows alone vs padded batch"))
    return checks


def verify(bundle: Bundle, backend: str = "ort-cpu", variants: list[str] | None = None,
           threads: int | None = None) -> list[ParityReport]:
    """Check every (or the named) variant of `bundle` on `backend` against its golden I/O."""
    kind = bundle.model.get("kind")
    if kind not in ("causal-lm", "encoder"):
        raise BundleError(f"{bundle.path}: parity for model kind {kind!r} is not implemented")
    golden = bundle.golden()
    reports = []
    for name in variants or list(bundle.variants):
        variant = bundle.variant(name)
        tolerance = tolerance_for(variant.precision)
        session = Session(bundle, variant=name, backend=backend, threads=threads)
        report = ParityReport(name, backend, variant.precision, tolerance.to_dict())
        if kind == "causal-lm":
            report.checks = verify_causal_lm(session, golden, tolerance.max_abs)
        else:
            report.checks = verify_encoder(session, golden, tolerance)
        reports.append(report)
    return reports
