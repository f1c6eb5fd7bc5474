"""The encoder kind (encoder-only transformers: BERT, RoBERTa, DeBERTa, ModernBERT, ...): token ids in, hidden states out; sentence embeddings pooled in numpy.

Golden I/O (captured by edgetx.exporters.encoder): one padded batch of real sentences, `batch.{input}`,
`batch.last_hidden_state` and `batch.embeddings` (pooled as the model's sentence-transformers config asks).
Parity: hidden states at real tokens, pooled embeddings (cosine), and rows alone (each sentence run alone gives
the embedding PyTorch gave it alone, `batch.alone.last_hidden_state`). Gates: cosine of pooled embeddings on
held-out sentences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetx.errors import BackendError, BundleError, InputError
from edgetx.kinds.base import (BenchTable, ModelKind, ReportAxes, padding_note, percentiles, register_kind,
                               rows_per_run, stored_batch, timed_ms)
from edgetx.verify import metrics
from edgetx.verify.report import Check

POOLING_MODES = ("mean", "cls", "max")
INVARIANCE_ROWS = 4  # sentences run alone for the padding-invariance check


def pool(hidden: np.ndarray, attention_mask: np.ndarray, config: dict) -> np.ndarray:
    """(batch, seq, hidden) + (batch, seq) mask -> (batch, hidden) float32, as sentence-transformers
    pools: {"mode": "mean" | "cls" | "max", "normalize": bool}."""
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


def embedding_check(tolerance: Any, want: np.ndarray, got: np.ndarray, note: str) -> Check:
    """The "embeddings" parity check of (rows, dim) embeddings against PyTorch's: max |diff| and cosine per row
    (min, and mean where the tolerance bounds it)."""
    cosines = metrics.cosine(want, got)
    cosine, mean = float(cosines.min()), float(cosines.mean())
    diff = metrics.max_abs(want, got)
    ok = cosine >= tolerance.min_cosine and diff <= tolerance.max_abs and mean >= (tolerance.min_cosine_mean or 0)
    return Check("embeddings", ok, diff, f"cosine min {cosine:.7f} mean {mean:.7f} ({note})")


def cosine_gate(want: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Gate metrics of (rows, dim) embeddings against the fp32 reference's: cosine mean and min, and the row count."""
    cosines = metrics.cosine(want, got)
    return {"cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min()), "rows": len(cosines)}


def embed(session: Any, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Sentence embeddings (len(texts), hidden) float32 of an encoder session, pooled as the model's
    sentence-transformers config asks (e.g. mean pooling + L2 normalisation)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InputError("embed takes a list of strings")
    batch_size = rows_per_run(session.model, batch_size)
    chunks = [_embed_batch(session, texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, session.model["hidden_size"]), np.float32)


def text_feeds(session: Any, ids: list[list[int]], type_ids: list[list[int]], width: int | None = None
               ) -> dict[str, np.ndarray]:
    """Token ids of texts padded into the inputs the session's graph takes (input_ids, attention_mask, ...), to the
    longest text, or to `width` tokens (a model that pools at a position and takes no mask: SigLIP)."""
    width = width or max(len(i) for i in ids)
    batch = {"input_ids": np.full((len(ids), width), session.tokenizer.pad_token_id, np.int64),
             "attention_mask": np.zeros((len(ids), width), np.int64),
             "token_type_ids": np.zeros((len(ids), width), np.int64)}
    for row, (tokens, types) in enumerate(zip(ids, type_ids)):
        batch["input_ids"][row, : len(tokens)] = tokens
        batch["attention_mask"][row, : len(tokens)] = 1
        batch["token_type_ids"][row, : len(types)] = types
    return {s["name"]: batch[s["name"]] for s in session.inputs}


def _embed_batch(session: Any, texts: list[str]) -> np.ndarray:
    ids, type_ids = session.tokenizer.encode_batch(texts, session.model["max_positions"])
    batch = text_feeds(session, ids, type_ids)
    hidden = session.run(batch, ["last_hidden_state"])["last_hidden_state"]
    vectors = pool(hidden, batch["attention_mask"], session.model.get("pooling") or {})
    if not np.isfinite(vectors).all():
        raise BackendError(f"{session.model_path} produced non-finite embeddings (NaN/inf): the variant is damaged "
                           "or numerically unstable; check it with `edgetx verify`")
    return vectors


@register_kind
class Encoder(ModelKind):
    name = "encoder"
    described_as = "an encoder"
    helpers = frozenset({"embed"})
    # int8-outliers: all-MiniLM-L6-v2 at cosine mean 0.9979 / min 0.9966 with no MatMul left in fp32;
    # batch 1 x 128 in 0.60x / 0.74x the time of Optimum O2+int8 at 1 / 2 threads (benchmarks/peers.py);
    # plain `int8` needs 4 of its 24 MatMuls in fp32.
    default_schemes = ("int8-outliers", "int4")
    default_fixed_dims = "batch=1,seq=128"
    truncates_text = True  # as sentence-transformers does
    score = "one golden batch, median ms"
    golden_input = "batch"

    # --- parity ----------------------------------------------------------------------------------------

    def primary_output(self, session: Any, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Hidden states at real tokens (padding positions are not compared)."""
        feeds = self.golden_feeds(session.inputs, golden)
        mask = feeds["attention_mask"].astype(bool)
        hidden = session.run(feeds, ["last_hidden_state"])["last_hidden_state"]
        return golden["batch.last_hidden_state"][mask], hidden[mask]

    def parity_checks(self, session: Any, golden: dict[str, np.ndarray], tolerance: Any) -> list[Check]:
        """Hidden states and pooled embeddings of a padded batch, and each row alone against PyTorch alone."""
        feeds = self.golden_feeds(session.inputs, golden)
        mask = feeds["attention_mask"].astype(bool)
        hidden = session.run(feeds, ["last_hidden_state"])["last_hidden_state"]
        diff = metrics.max_abs(golden["batch.last_hidden_state"][mask], hidden[mask])
        checks = [Check("hidden states", diff <= tolerance.max_abs, diff, f"{mask.shape[0]} sentences, real tokens")]
        pooling = session.model.get("pooling", {})
        embeddings = pool(hidden, feeds["attention_mask"], pooling)
        checks.append(embedding_check(tolerance, golden["batch.embeddings"], embeddings,
                                      f"{pooling.get('mode', 'mean')} pooling"
                                      f"{', normalized' if pooling.get('normalize') else ''}"))
        rows = range(min(INVARIANCE_ROWS, mask.shape[0]))
        alone = []
        for row in rows:
            single = {name: value[row : row + 1, mask[row]] for name, value in feeds.items()}
            out = session.run(single, ["last_hidden_state"])["last_hidden_state"]
            alone.append(pool(out, single["attention_mask"], pooling)[0])
        alone = np.stack(alone)
        if "batch.alone.last_hidden_state" in golden:
            want = self._alone_embeddings(golden, mask, pooling)
            cosine, diff = float(metrics.cosine(want, alone).min()), metrics.max_abs(want, alone)
            checks.append(Check("rows alone", cosine >= tolerance.min_cosine and diff <= tolerance.max_abs, diff,
                                f"{len(rows)} rows alone vs PyTorch's rows alone, cosine min {cosine:.7f}"
                                + padding_note(session.model)))
        else:  # bundles from before the rows-alone golden answers: the graph against itself
            diff = metrics.max_abs(embeddings[list(rows)], alone)
            checks.append(Check("padding invariance", diff <= tolerance.max_abs, diff,
                                f"{len(rows)} rows alone vs in the padded batch"))
        return checks

    @staticmethod
    def _alone_embeddings(golden: dict[str, np.ndarray], mask: np.ndarray, pooling: dict) -> np.ndarray:
        """PyTorch's pooled embedding of each row run alone (its hidden states at the row's real positions)."""
        hidden = golden["batch.alone.last_hidden_state"]
        return np.concatenate([pool(hidden[row : row + 1, mask[row]], np.ones((1, int(mask[row].sum())), np.int64),
                                    pooling) for row in range(len(hidden))])

    def alone_vs_batch(self, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        if "batch.alone.last_hidden_state" not in golden:
            return None
        alone = golden["batch.alone.last_hidden_state"]
        real = golden["batch.attention_mask"][: len(alone)].astype(bool)
        return golden["batch.last_hidden_state"][: len(alone)][real], alone[real]  # hidden states at real tokens

    def outputs_agree(self, tolerance: Any, want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[bool, str]:
        if tolerance.max_kld is None or not np.isfinite(got["last_hidden_state"]).all():
            return super().outputs_agree(tolerance, want, got)
        hidden_want, hidden_got = want["last_hidden_state"], got["last_hidden_state"]
        cosine = float(metrics.cosine(hidden_want.reshape(-1, hidden_want.shape[-1]),
                                      hidden_got.reshape(-1, hidden_got.shape[-1])).min())
        return cosine >= tolerance.min_cosine, f"token cosine min {cosine:.4f} (>= {tolerance.min_cosine:g})"

    def fixed_samples(self, golden: dict[str, np.ndarray], reference: Any, dims: dict[str, int],
                      count: int) -> list[dict[str, np.ndarray]]:
        """The golden sentences' real tokens, run together into batch x seq (shifted by 7 per sample)."""
        real = golden["batch.input_ids"][golden["batch.attention_mask"].astype(bool)]
        ids = np.resize(real, (dims["batch"], dims["seq"])).astype(np.int64)
        values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        first = {s["name"]: values[s["name"]] for s in reference.inputs}
        return [{**first, "input_ids": np.roll(ids, 7 * shift, axis=1)} for shift in range(count)]

    # --- quantization gates ----------------------------------------------------------------------------

    def gate_metrics(self, reference, candidate, inputs: list[dict], data: dict[str, np.ndarray],
                     model: dict) -> dict[str, float]:
        """Cosine of the pooled embeddings of the held-out sentences."""
        feeds = stored_batch(inputs, data, self.eval_prefix)
        pooling = model.get("pooling") or {}
        ref = pool(reference(feeds)["last_hidden_state"], feeds["attention_mask"], pooling)
        got = pool(candidate(feeds)["last_hidden_state"], feeds["attention_mask"], pooling)
        gate = cosine_gate(ref, got)
        return {**gate, "texts": gate.pop("rows")}

    def gate_summary(self, result: dict[str, float]) -> str:
        return f"cosine mean {result['cosine_mean']:.5f}, min {result['cosine_min']:.5f} ({result['texts']} texts)"

    # --- timing ----------------------------------------------------------------------------------------

    def bench(self, session: Any, config: Any) -> dict:
        """Latency percentiles and throughput per batch size x sequence length, on real sentences' tokens."""
        golden = session.bundle.golden()
        real_tokens = golden["batch.input_ids"][golden["batch.attention_mask"].astype(bool)]
        rows = []
        for batch in config.batch_sizes:
            for seq in config.seq_lens:
                seq = min(seq, session.model["max_positions"])
                values = {"input_ids": np.resize(real_tokens, (batch, seq)), "attention_mask": np.ones((batch, seq))}
                feeds = {s["name"]: values.get(s["name"], np.zeros((batch, seq))).astype(np.int64) for s in session.inputs}
                stats = percentiles(timed_ms(lambda: session.run(feeds), config.warmup, config.repeats))
                rows.append({"batch": batch, "seq": seq, **stats, "sequences_per_s": batch * 1e3 / stats["p50_ms"]})
        return {"batches": rows}

    def bench_rows(self, results: list[dict]) -> list[BenchTable]:
        rows = [(r["variant"], r["backend"], str(r["threads"]), f"{r['file_mb']:.1f}", f"{r['load_ms']:.0f}",
                 str(b["batch"]), str(b["seq"]), f"{b['p50_ms']:.2f} / {b['p90_ms']:.2f} / {b['p99_ms']:.2f}",
                 f"{b['sequences_per_s']:.1f}") for r in results for b in r["batches"]]
        return [BenchTable(f"{self.name} bench", ("variant", "backend", "threads", "MB", "load ms", "batch", "seq",
                                             "p50/p90/p99 ms", "seq/s"), rows)]

    # --- the report ------------------------------------------------------------------------------------

    def report_axes(self, gated: bool) -> ReportAxes:
        return ReportAxes("mean embedding cosine vs fp32 (higher is better)", True, "p50 ms, batch 1")

    def report_latency(self, result: dict) -> tuple[float, dict]:
        rows = sorted(result["batches"], key=lambda b: (b["batch"], b["seq"]))
        return rows[0]["p50_ms"], {f"b{b['batch']}xs{b['seq']} seq/s": b["sequences_per_s"] for b in rows}
