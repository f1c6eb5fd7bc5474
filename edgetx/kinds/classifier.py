"""Encoder task heads: sequence classification (one label per text) and token classification (one label
per token), both `logits` out of an encoder-only transformer; labels by class id in the manifest's
`model.labels`.

Golden I/O (captured by edgetx.exporters.encoder): one padded batch of real sentences, `batch.{input}` and
`batch.logits`. Parity: logits (at real tokens), argmax labels, and rows alone (each sentence run alone gives
the logits PyTorch gave it alone, `batch.alone.logits`). Gates: label agreement (top-1 per sentence, or per real unpadded token) and the
mean KL divergence of the label distribution against fp32 on held-out sentences.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from edgetx.errors import BackendError, InputError
from edgetx.kinds.base import ReportAxes, padding_note, register_kind, rows_per_run, stored_batch
from edgetx.kinds.encoder import INVARIANCE_ROWS, Encoder, text_feeds
from edgetx.verify import metrics
from edgetx.verify.report import Check


def softmax(logits: np.ndarray) -> np.ndarray:
    """Label probabilities of logits (..., labels), float32."""
    return np.exp(metrics.log_softmax(logits)).astype(np.float32)


def labelled(labels: list[str], probs: np.ndarray) -> dict:
    """One row's answer: its label, that label's probability, and every label's probability."""
    best = int(np.argmax(probs))
    return {"label": labels[best], "score": float(probs[best]),
            "scores": {label: float(v) for label, v in zip(labels, probs)}}


# --- what every classification head shares (text heads here, image classification in edgetx.kinds.vision) --

def logits_agree(tolerance: Any, want: np.ndarray, got: np.ndarray) -> tuple[bool, float, str]:
    """(passed, max |diff|, detail): max |diff| for fp32, mean KL of the label distribution when quantized."""
    diff = metrics.max_abs(want, got)
    if not np.isfinite(got).all():
        return False, diff, "NaN or inf in the logits"
    if tolerance.max_kld is None:
        return diff <= tolerance.max_abs, diff, f"max |diff| {diff:.2e} (<= {tolerance.max_abs:.2e})"
    kld = float(metrics.kl_divergence(want, got).mean())
    return kld <= tolerance.max_kld, diff, f"mean KL {kld:.2e} (<= {tolerance.max_kld:g})"


def label_checks(tolerance: Any, want: np.ndarray, got: np.ndarray, unit: str) -> list[Check]:
    """The "logits" and "labels" parity checks of rows of logits (rows, labels) against PyTorch's."""
    ok, diff, detail = logits_agree(tolerance, want, got)
    checks = [Check("logits", ok, diff, f"{len(want)} {unit}: {detail}")]
    # a label may flip only where PyTorch's top two are closer than the difference allowed
    ranked = np.sort(want, axis=-1)
    margin = ranked[:, -1] - ranked[:, -2] if want.shape[-1] > 1 else np.full(len(want), np.inf)
    clear = margin > 2 * (tolerance.max_abs if tolerance.max_kld is None else 0.0)
    flips = (np.argmax(want, -1) != np.argmax(got, -1))
    top1 = metrics.top1_agreement(want, got)
    ok = tolerance.max_kld is not None or not (flips & clear).any()  # quantized: the gate judges top-1
    checks.append(Check("labels", ok, float(flips.sum()),
                        f"top-1 agreement {top1:.3f} over {len(want)} {unit} ({int((flips & clear).sum())} "
                        f"flips beyond the tolerance)"))
    return checks


def label_gate(want: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Gate metrics of rows of logits against the fp32 reference's: label agreement and KL of the distribution."""
    kld = metrics.kl_divergence(want, got)
    return {"top1": metrics.top1_agreement(want, got), "kld_mean": float(kld.mean()), "kld_max": float(kld.max()),
            "rows": len(want)}


def label_gate_misses(result: dict[str, float], tolerance: Any) -> list[str]:
    """What missed a label gate, and by how much (empty = passed)."""
    out = []
    if result["top1"] < tolerance.min_top1:
        out.append(f"label agreement {result['top1']:.3f} < {tolerance.min_top1} "
                   f"(by {tolerance.min_top1 - result['top1']:.3f})")
    if result["kld_mean"] > tolerance.max_kld:
        out.append(f"mean KL {result['kld_mean']:.4f} > {tolerance.max_kld} "
                   f"(by {result['kld_mean'] - tolerance.max_kld:.4f})")
    return out


def label_tolerance_label(tolerance: dict) -> str:
    """A classification head's bound for tables: max |diff| for fp32, the KL and top-1 gate when quantized."""
    if tolerance.get("max_kld") is None:
        return f"{tolerance['max_abs']:.0e}"
    return f"KL<={tolerance['max_kld']:g}, top-1>={tolerance['min_top1']:g}"


def label_accuracy(gate: dict | None) -> tuple[float, dict]:
    """A label gate's point on the report: top-1 agreement vs fp32 (the reference itself at 1.0), mean KL beside it."""
    if gate is None:
        return 1.0, {"mean KL": 0.0}
    return gate["top1"], {"mean KL": gate["kld_mean"]}


class _Classifier(Encoder):
    """What the two heads share; `per_token` says whether logits are per text or per token."""

    per_token: ClassVar[bool] = False
    default_schemes = ("int8-outliers", "int4")

    def io_problem(self, inputs: list[dict], outputs: list[dict]) -> str | None:
        """Token-id inputs with an attention mask, and one `logits` output of the head's rank."""
        rank = 3 if self.per_token else 2
        if "attention_mask" not in {s["name"] for s in inputs}:
            return f"{self.described_as} takes an attention_mask input"
        if [o["name"] for o in outputs] != ["logits"] or len(outputs[0]["shape"]) != rank:
            return f"{self.described_as} returns one output, 'logits', of rank {rank}"
        return None

    def rows(self, logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The logits that carry labels: one row per text, or one per real (unpadded) token."""
        return logits[mask.astype(bool)] if self.per_token else logits

    # --- parity ----------------------------------------------------------------------------------------

    def primary_output(self, session: Any, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Logits of the golden batch (at real tokens for token classification)."""
        feeds = self.golden_feeds(session.inputs, golden)
        got = session.run(feeds, ["logits"])["logits"]
        return self.rows(golden["batch.logits"], feeds["attention_mask"]), self.rows(got, feeds["attention_mask"])

    def parity_checks(self, session: Any, golden: dict[str, np.ndarray], tolerance: Any) -> list[Check]:
        """Logits and labels of a padded batch of real sentences, and each row alone against PyTorch alone."""
        feeds = self.golden_feeds(session.inputs, golden)
        mask = feeds["attention_mask"]
        logits = session.run(feeds, ["logits"])["logits"]
        want, got = self.rows(golden["batch.logits"], mask), self.rows(logits, mask)
        checks = label_checks(tolerance, want, got, "real tokens" if self.per_token else "sentences")
        real = mask.astype(bool)
        rows = range(min(INVARIANCE_ROWS, mask.shape[0]))
        alone = [session.run({name: value[row : row + 1, real[row]] for name, value in feeds.items()},
                             ["logits"])["logits"][0] for row in rows]
        if "batch.alone.logits" in golden:
            want_alone = golden["batch.alone.logits"]
            want_rows = [want_alone[row, real[row]] if self.per_token else want_alone[row] for row in rows]
            ok, diff, detail = logits_agree(tolerance, np.concatenate(want_rows).reshape(-1, want.shape[-1]),
                                                  np.concatenate(alone).reshape(-1, want.shape[-1]))
            checks.append(Check("rows alone", ok, diff, f"{len(rows)} rows alone vs PyTorch's rows alone: {detail}"
                                + padding_note(session.model)))
        else:  # bundles from before the rows-alone golden answers: the graph against itself
            alone_diff = max((metrics.max_abs(logits[row, real[row]] if self.per_token else logits[row], out)
                              for row, out in zip(rows, alone)), default=0.0)
            bound = tolerance.max_abs if tolerance.max_kld is None else np.inf
            checks.append(Check("padding invariance", alone_diff <= bound, alone_diff,
                                f"{len(rows)} rows alone vs in the padded batch"))
        return checks

    def alone_vs_batch(self, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        if "batch.alone.logits" not in golden:
            return None
        alone = golden["batch.alone.logits"]
        real = golden["batch.attention_mask"][: len(alone)].astype(bool)
        batch = golden["batch.logits"][: len(alone)]
        return (batch[real], alone[real]) if self.per_token else (batch, alone)

    def outputs_agree(self, tolerance: Any, want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[bool, str]:
        ok, _, detail = logits_agree(tolerance, want["logits"].reshape(-1, want["logits"].shape[-1]),
                                           got["logits"].reshape(-1, got["logits"].shape[-1]))
        return ok, detail

    def tolerance_label(self, tolerance: dict) -> str:
        return label_tolerance_label(tolerance)

    # --- quantization gates ----------------------------------------------------------------------------

    def gate_metrics(self, reference, candidate, inputs: list[dict], data: dict[str, np.ndarray],
                     model: dict) -> dict[str, float]:
        """Label agreement and mean KL of the label distribution on the held-out sentences."""
        feeds = stored_batch(inputs, data, self.eval_prefix)
        want = self.rows(reference(feeds)["logits"], feeds["attention_mask"])
        got = self.rows(candidate(feeds)["logits"], feeds["attention_mask"])
        return {**label_gate(want, got), "texts": int(feeds["attention_mask"].shape[0])}

    def gate_misses(self, result: dict[str, float], tolerance: Any) -> list[str]:
        return label_gate_misses(result, tolerance)

    def gate_score(self, result: dict[str, float]) -> float:
        return result["kld_mean"] + (1.0 - result["top1"])

    def gate_summary(self, result: dict[str, float]) -> str:
        unit = "tokens" if self.per_token else "texts"
        return f"labels agree {result['top1']:.3f}, KL {result['kld_mean']:.4f} ({result['rows']} {unit})"

    # --- the report ------------------------------------------------------------------------------------

    def report_axes(self, gated: bool) -> ReportAxes:
        unit = "token" if self.per_token else "sentence"
        return ReportAxes(f"{unit} label agreement vs fp32 (higher is better)", True, "p50 ms, batch 1")

    def report_accuracy(self, gate: dict | None, reference_gates: list[dict], parity: dict | None) -> tuple[float, dict]:
        return label_accuracy(gate)


@register_kind
class SequenceClassification(_Classifier):
    name = "sequence-classification"
    described_as = "a sequence classifier"
    helpers = frozenset({"classify"})


@register_kind
class TokenClassification(_Classifier):
    name = "token-classification"
    described_as = "a token classifier"
    helpers = frozenset({"tag"})
    per_token = True


def _texts(texts: object, verb: str) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InputError(f"{verb} takes a list of strings")
    return list(texts)


def _logits(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    logits = session.run(feeds, ["logits"])["logits"]
    if not np.isfinite(logits).all():
        raise BackendError(f"{session.model_path} produced non-finite logits (NaN/inf): the variant is damaged "
                           "or numerically unstable; check it with `edgetx verify`")
    return logits


def classify(session: Any, texts: list[str], batch_size: int = 32) -> list[dict]:
    """Per text: its label, that label's probability, and every label's probability."""
    labels = session.model["labels"]
    out = []
    batch_size = rows_per_run(session.model, batch_size)
    for start in range(0, len(_texts(texts, "classify")), batch_size):
        chunk = texts[start : start + batch_size]
        ids, type_ids = session.tokenizer.encode_batch(chunk, session.model["max_positions"])
        probs = softmax(_logits(session, text_feeds(session, ids, type_ids)))
        out += [{"text": text, **labelled(labels, p)} for text, p in zip(chunk, probs)]
    return out


def tag(session: Any, texts: list[str], batch_size: int = 32) -> list[list[dict]]:
    """Per text, one entry per word: its text, character span, label and probability, taken from the word's
    first token (as transformers' token-classification pipeline does with aggregation "first"); each
    entry also lists its tokens' own labels."""
    labels = session.model["labels"]
    out = []
    batch_size = rows_per_run(session.model, batch_size)
    for start in range(0, len(_texts(texts, "tag")), batch_size):
        chunk = texts[start : start + batch_size]
        encoded = session.tokenizer.encode_words(chunk, session.model["max_positions"])
        probs = softmax(_logits(session, text_feeds(session, [e[0] for e in encoded], [e[1] for e in encoded])))
        for text, (ids, _, word_ids, offsets), p in zip(chunk, encoded, probs):
            words: dict[int, dict] = {}
            for position, word in enumerate(word_ids):
                if word is None:
                    continue
                best = int(np.argmax(p[position]))
                token = {"position": position, "label": labels[best], "score": float(p[position, best])}
                entry = words.setdefault(word, {**token, "start": offsets[position][0], "tokens": []})
                entry["end"] = offsets[position][1]
                entry["tokens"].append(token)
            out.append([{"word": text[w["start"] : w["end"]], "start": w["start"], "end": w["end"],
                         "label": w["label"], "score": w["score"], "tokens": w["tokens"]} for w in words.values()])
    return out
