"""The encoder-decoder kind (T5, BART, mBART, Marian, Pegasus, ...): text in, text out, over two graphs.

A variant holds the decoder (the main graph) and the encoder (`session.component("encoder")`); the graph contract
is in edgetx.exporters.seq2seq. Golden I/O: a padded batch of real sentences (`encoder.*`), the encoder's states,
and greedy decoding with the cache (`decode.tokens`, `decode.logits`), also of each sentence alone
(`decode.alone_*`). Parity checks:
- encoder states at real tokens;
- greedy decode: the variant's own greedy decoding of the batch, with its cache, picks PyTorch's tokens, logits
  within the tolerance;
- cache == recompute: one decoder pass over the same tokens without a cache gives the cached steps' logits;
- rows alone: each sentence decoded alone gives PyTorch's tokens and logits for it alone.
Gates: on held-out sentences, the fp32 variant's greedy output is teacher-forced through both: mean KL of the
next-token distribution and top-1 agreement, with greedy agreement reported. Torch-free.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgetx.errors import EdgetxError, InputError
from edgetx.kinds.base import (BenchTable, ModelKind, ReportAxes, distribution_misses, median_ms, padding_note,
                               percentiles, register_kind, rows_per_run)
from edgetx.kinds.decoding import PAST_PREFIX, empty_cache, next_cache
from edgetx.verify import metrics
from edgetx.verify.report import Check

CROSS_PREFIX = "cross."
GATE_STEPS = 16  # greedy tokens of the fp32 variant teacher-forced through a quantized one
DECODE_TOKENS = 32  # a graph candidate's score: the encoder + this many decode steps


class DecoderLoop:
    """Carries the self-attention cache of one batch from step to step; the cross cache stays as the encoder made it."""

    def __init__(self, run, inputs: list[dict], encoded: dict[str, np.ndarray], mask: np.ndarray | None):
        self.run, self.inputs = run, inputs
        self.cross = {k: v for k, v in encoded.items() if k.startswith(CROSS_PREFIX)}
        self.mask = mask
        batch = next(iter(self.cross.values())).shape[0]
        self.cache = empty_cache(inputs, batch)

    def feeds(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        names = {s["name"] for s in self.inputs}
        feeds = {"decoder_input_ids": tokens.astype(np.int64), **self.cache, **self.cross}
        if "encoder_attention_mask" in names:
            feeds["encoder_attention_mask"] = self.mask
        return feeds

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Feed `tokens` (batch, n); returns the logits (batch, n, vocab) and keeps the cache."""
        out = self.run(self.feeds(tokens))
        self.cache = next_cache(out, self.cache)
        return out["logits"]


ENCODER_ROWS = 2  # rows greedy / teacher-forced decoding run through the encoder at once


def encode(run, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The encoder's outputs for a batch, run ENCODER_ROWS rows at a time: its activations are the build's largest
    (Whisper base: nine 30 s windows at once took 1.9 GB more than the weights), the outputs are small."""
    batch = len(next(iter(feeds.values())))
    parts = [run({k: v[row : row + ENCODER_ROWS] for k, v in feeds.items()}) for row in range(0, batch, ENCODER_ROWS)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _encoder_feeds(inputs: list[dict], batch: dict[str, np.ndarray], prefix: str = "encoder.") -> dict[str, np.ndarray]:
    return {s["name"]: batch[prefix + s["name"]] for s in inputs}


def greedy(runs: dict, inputs: dict[str, list[dict]], feeds: dict[str, np.ndarray], prompt, steps: int,
           forced: int | None = None, eos: set[int] = frozenset(), adjust=None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy decoding of a batch with the cache after the decoder `prompt` (a start token, or a list such as
    Whisper's start, language and task tokens): (tokens (batch, n), logits (batch, n, vocab)). `forced` is the
    first token (mBART's target language); `adjust(logits, step)` edits the logits a token is picked from
    (suppressed tokens); with `eos`, stops once every row has produced one (rows that are done repeat it)."""
    encoded = encode(runs["encoder"], feeds)
    loop = DecoderLoop(runs["decoder"], inputs["decoder"], encoded, feeds.get("attention_mask"))
    batch = next(iter(feeds.values())).shape[0]
    token = np.tile(np.atleast_1d(np.asarray(prompt, np.int64)), (batch, 1))
    tokens, logits, done = [], [], np.zeros(batch, bool)
    for step in range(steps):
        out = loop.step(token)[:, -1]
        logits.append(out)
        if adjust is not None:
            out = adjust(out.copy(), step)
        pick = out.argmax(-1) if forced is None or step else np.full(batch, forced)
        pick = np.where(done, tokens[-1] if tokens else pick, pick)
        tokens.append(pick)
        done |= np.isin(pick, list(eos))
        token = pick[:, None].astype(np.int64)
        if eos and done.all():
            break
    return np.stack(tokens, 1).astype(np.int64), np.stack(logits, 1)


def teacher_forced(runs: dict, inputs: dict[str, list[dict]], feeds: dict[str, np.ndarray], prompt,
                   tokens: np.ndarray) -> np.ndarray:
    """One decoder pass, no cache, over prompt + tokens[:, :-1]: the logits of every step of `tokens`."""
    encoded = encode(runs["encoder"], feeds)
    loop = DecoderLoop(runs["decoder"], inputs["decoder"], encoded, feeds.get("attention_mask"))
    head = np.tile(np.atleast_1d(np.asarray(prompt, np.int64)), (len(tokens), 1))
    return loop.step(np.concatenate([head, tokens[:, :-1]], axis=1))[:, head.shape[1] - 1:]


def _runs(session) -> tuple[dict, dict]:
    """The {graph: run} and {graph: inputs} of a variant's session (the decoder is the main graph)."""
    encoder = session.component("encoder")
    return {"encoder": encoder.run, "decoder": session.run}, {"encoder": encoder.inputs, "decoder": session.inputs}


def _io_inputs(io: dict) -> dict[str, list[dict]]:
    return {"decoder": io["inputs"], "encoder": io["components"]["encoder"]["inputs"]}


@register_kind
class Seq2Seq(ModelKind):
    name = "seq2seq"
    described_as = "an encoder-decoder"
    helpers = frozenset({"translate"})
    main_graph = "decoder"
    components = ("encoder",)
    # int8-weight-only-a8: onnxruntime's 8-bit MatMulNBits is fast only with int8 activations (level 4); on Whisper
    # base it held the speech gate (KL 0.0012, top-1 0.993, WER 0.013) where dynamic int8 missed (README)
    default_schemes = ("int8", "int8-weight-only", "int8-weight-only-a8", "int4")
    truncates_text = True
    score = f"encoder + {DECODE_TOKENS} decode steps, median ms"
    timing_columns = ("encoder_ms", "decode_ms")
    golden_input = "encoder"

    def io_problem(self, inputs: list[dict], outputs: list[dict]) -> str | None:
        names, out = {s["name"] for s in inputs}, {s["name"] for s in outputs}
        if "decoder_input_ids" not in names or "logits" not in out:
            return "the decoder graph takes decoder_input_ids and returns logits"
        if not any(n.startswith(CROSS_PREFIX) for n in names):
            return "the decoder graph takes the cross-attention cache (cross.{i}.key|value)"
        missing = [n for n in names if n.startswith(PAST_PREFIX) and "present." + n[len(PAST_PREFIX):] not in out]
        return f"cache input {missing[0]!r} has no matching present.* output" if missing else None

    def component_io_problem(self, component: str, inputs: list[dict], outputs: list[dict]) -> str | None:
        if component != "encoder":
            return super().component_io_problem(component, inputs, outputs)
        out = {s["name"] for s in outputs}
        if "last_hidden_state" not in out or not any(n.startswith(CROSS_PREFIX) for n in out):
            return "the encoder graph returns last_hidden_state and the cross-attention cache (cross.{i}.key|value)"
        return None

    # --- parity ----------------------------------------------------------------------------------------

    def golden_feeds(self, inputs: list[dict], golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The decoder's first step on the golden batch needs the encoder first: explain cannot replay it alone."""
        raise EdgetxError("an encoder-decoder's decoder graph needs its encoder's cross cache; it cannot be replayed "
                          "alone (edgetx verify checks both graphs together)")

    def primary_output(self, session: Any, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's states at real positions, and the golden tokens teacher-forced through both graphs (the
        logits of every step): the fp32 budget measured on them covers both checks held to it."""
        runs, inputs = _runs(session)
        feeds = _encoder_feeds(inputs["encoder"], golden)
        want_states = golden["encoder.last_hidden_state"]
        mask = feeds.get("attention_mask", np.ones(want_states.shape[:2])).astype(bool)
        states = runs["encoder"](feeds, ["last_hidden_state"])["last_hidden_state"]
        forced = teacher_forced(runs, inputs, feeds, golden["decode.prompt"], golden["decode.tokens"])
        return (np.concatenate([want_states[mask].ravel(), golden["decode.logits"].ravel()]),
                np.concatenate([states[mask].ravel(), forced.ravel()]))

    def parity_checks(self, session: Any, golden: dict[str, np.ndarray], tolerance: Any) -> list[Check]:
        runs, inputs = _runs(session)
        feeds = _encoder_feeds(inputs["encoder"], golden)
        mask = feeds.get("attention_mask", np.ones(golden["encoder.last_hidden_state"].shape[:2])).astype(bool)
        start, want_tokens, want_logits = golden["decode.prompt"], golden["decode.tokens"], golden["decode.logits"]
        hidden = runs["encoder"](feeds, ["last_hidden_state"])["last_hidden_state"]
        want_states, states = golden["encoder.last_hidden_state"][mask], hidden[mask]
        diff = metrics.max_abs(want_states, states)
        if tolerance.max_kld is None:
            ok, detail = diff <= tolerance.max_abs, f"max |diff| {diff:.2e} (<= {tolerance.max_abs:.2e})"
        else:  # quantized: the states may move (quiet frames most); the decoder's logits below are what is judged
            cosines = metrics.cosine(want_states, states)
            ok = bool(np.isfinite(states).all())
            detail = f"cosine mean {cosines.mean():.4f}, min {cosines.min():.4f} (reported; judged by the logits)"
        checks = [Check("encoder states", ok, diff, f"{mask.shape[0]} inputs, real positions: {detail}")]
        steps = want_tokens.shape[1]
        tokens, logits = greedy(runs, inputs, feeds, start, steps)
        checks.append(self._decode_check("greedy decode", tolerance, want_tokens, want_logits, tokens, logits,
                                         lambda: teacher_forced(runs, inputs, feeds, start, want_tokens), session.model))
        forced = teacher_forced(runs, inputs, feeds, start, tokens)
        ok, diff, detail = tolerance.compare_logits(logits, forced)
        checks.append(Check("cache == recompute", ok, diff, f"{tokens.size} positions" + (f"; {detail}" if detail else "")))
        singles = [{n: (v[row : row + 1, mask[row]] if v.ndim == 2 else v[row : row + 1]) for n, v in feeds.items()}
                   for row in range(len(mask))]
        alone = [greedy(runs, inputs, single, start, steps) for single in singles]
        want_alone = golden["decode.alone_tokens"]
        check = self._decode_check(
            "rows alone", tolerance, want_alone, golden["decode.alone_logits"], np.concatenate([t for t, _ in alone]),
            np.concatenate([lg for _, lg in alone]),
            lambda: np.concatenate([teacher_forced(runs, inputs, single, start, want_alone[row : row + 1])
                                    for row, single in enumerate(singles)]), session.model)
        checks.append(Check(check.name, check.passed, check.max_abs, check.detail + padding_note(session.model),
                            check.tokens))
        return checks

    def _decode_check(self, name: str, tolerance: Any, want_tokens, want_logits, tokens, logits, forced,
                      model: dict) -> Check:
        """fp32: the variant's own greedy tokens identical and its logits within the tolerance. Quantized: PyTorch's
        tokens teacher-forced through the variant (`forced()`), its logits within the KL bound (its own greedy
        tokens, which may part ways at a near-tie, are reported)."""
        agreed = [metrics.token_agreement(w, g)[0] for w, g in zip(want_tokens, tokens)]
        steps = want_tokens.shape[1]
        matched = all(a == steps for a in agreed)
        if tolerance.greedy_must_match:
            shared = min(agreed)
            ok, diff, detail = (tolerance.compare_logits(want_logits[:, :shared], logits[:, :shared]) if shared
                                else (False, float("inf"), ""))
            ok = ok and matched
        else:
            ok, diff, detail = self.quantized_logits_agree(tolerance, want_tokens, want_logits, forced(), model)
            detail = f"PyTorch's tokens teacher-forced: {detail}"
        summary = (f"{len(agreed)} rows x {steps} steps, all tokens identical" if matched else
                   f"tokens agree for {min(agreed)}-{max(agreed)} of {steps} steps") + (f"; {detail}" if detail else "")
        return Check(name, ok, diff, summary, [sum(agreed), len(agreed) * steps])

    def quantized_logits_agree(self, tolerance: Any, want_tokens, want_logits, got_logits, model: dict):
        """(passed, max |diff|, detail) of a quantized variant's logits on PyTorch's tokens: the KL bound."""
        return tolerance.compare_logits(want_logits, got_logits)

    def alone_vs_batch(self, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
        if "decode.alone_logits" not in golden:
            return None
        return golden["decode.logits"], golden["decode.alone_logits"]

    def tolerance_label(self, tolerance: dict) -> str:
        return super().tolerance_label(tolerance) if tolerance.get("max_kld") is None else f"KL<={tolerance['max_kld']:g}"

    def fixed_samples(self, golden, reference, dims, count):
        raise InputError("fixed-shape copies of an encoder-decoder are not made yet: its decoder graph takes no "
                         "self-attention mask, so a cache padded to a fixed length would be attended to; its "
                         "variants run on backends that take dynamic shapes")

    # --- quantization gates (reference and candidate are {graph: run}; inputs is the whole io block) ------

    def gate_metrics(self, reference, candidate, inputs, data: dict[str, np.ndarray], model: dict) -> dict[str, float]:
        graph_inputs = _io_inputs(inputs)
        feeds = _encoder_feeds(graph_inputs["encoder"], data, "eval.")
        start = self.gate_prompt(model)
        want, _ = greedy(reference, graph_inputs, feeds, start, GATE_STEPS)
        ref = teacher_forced(reference, graph_inputs, feeds, start, want)
        got = teacher_forced(candidate, graph_inputs, feeds, start, want)
        kld = metrics.kl_divergence(ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1]))
        have, _ = greedy(candidate, graph_inputs, feeds, start, GATE_STEPS)
        agreed = [metrics.token_agreement(w, h)[0] for w, h in zip(want, have)]
        return {"kld_mean": float(kld.mean()), "kld_max": float(kld.max()),
                "top1": metrics.top1_agreement(ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])),
                "greedy_agreement": float(np.mean(agreed)) / GATE_STEPS, "tokens": int(want.size)}

    def gate_prompt(self, model: dict) -> list[int]:
        """The decoder prompt the gates decode after: the start token."""
        return [int(model["decoder_start_token_id"])]

    def gate_misses(self, result: dict[str, float], tolerance: Any) -> list[str]:
        return distribution_misses(result, tolerance)

    def gate_score(self, result: dict[str, float]) -> float:
        return result["kld_mean"]

    def gate_summary(self, result: dict[str, float]) -> str:
        return (f"KL {result['kld_mean']:.4f}, top-1 {result['top1']:.3f}, greedy {result['greedy_agreement']:.2f} "
                f"({result['tokens']} tokens)")

    # --- timing ----------------------------------------------------------------------------------------

    def time_graph(self, session: Any, golden: dict[str, np.ndarray], repeats: int = 3) -> dict[str, float]:
        """The encoder on the first golden sentence, and one decode step after the golden tokens."""
        runs, inputs = _runs(session)
        feeds = {n: v[:1] for n, v in _encoder_feeds(inputs["encoder"], golden).items()}
        encoder_ms = median_ms(lambda: runs["encoder"](feeds), repeats)
        loop = DecoderLoop(runs["decoder"], inputs["decoder"], runs["encoder"](feeds), feeds.get("attention_mask"))
        tokens = golden["decode.tokens"][:1]
        loop.step(np.concatenate([golden["decode.prompt"][None], tokens[:, :-1]], axis=1))
        step = loop.feeds(tokens[:, -1:])
        decode_ms = median_ms(lambda: runs["decoder"](step), repeats * 4)
        return {"encoder_ms": encoder_ms, "decode_ms": decode_ms, "score_ms": encoder_ms + DECODE_TOKENS * decode_ms}

    def bench(self, session: Any, config: Any) -> dict:
        """One sentence in (the first golden one), `-n` tokens out: encoder ms, time to first token, decode tok/s."""
        runs, inputs = _runs(session)
        golden = session.bundle.golden()
        feeds = {n: v[:1] for n, v in _encoder_feeds(inputs["encoder"], golden).items()}
        prompt, encoder_ms, first_ms, steps_ms = golden["decode.prompt"], [], [], []
        for rep in range(config.warmup + config.repeats):
            began = time.perf_counter()
            loop = DecoderLoop(runs["decoder"], inputs["decoder"], runs["encoder"](feeds), feeds.get("attention_mask"))
            encoded = time.perf_counter()
            token = prompt[None].astype(np.int64)
            times = []
            for _ in range(config.new_tokens):
                t0 = time.perf_counter()
                token = loop.step(token)[:, -1].argmax(-1)[:, None].astype(np.int64)
                times.append((time.perf_counter() - t0) * 1e3)
            if rep >= config.warmup:
                encoder_ms.append((encoded - began) * 1e3)
                first_ms.append((encoded - began) * 1e3 + times[0])
                steps_ms += times[1:]
        return {"source_tokens": int(next(iter(feeds.values())).shape[1]), "new_tokens": config.new_tokens,
                "encoder_ms": float(np.median(encoder_ms)), "time_to_first_token_ms": float(np.median(first_ms)),
                "decode_tokens_per_s": 1e3 / float(np.mean(steps_ms)) if steps_ms else None,
                "decode_token_latency": percentiles(steps_ms) if steps_ms else {}}

    def bench_rows(self, results: list[dict]) -> list[BenchTable]:
        rows = [(r["variant"], r["backend"], str(r["threads"]), f"{r['file_mb']:.1f}", f"{r['load_ms']:.0f}",
                 f"{r['encoder_ms']:.1f}", f"{r['time_to_first_token_ms']:.1f}",
                 f"{r['decode_tokens_per_s']:.1f}" if r["decode_tokens_per_s"] else "-") for r in results]
        r0 = results[0]
        return [BenchTable(f"encoder-decoder bench: {r0['source_tokens']} source tokens, {r0['new_tokens']} new tokens",
                           ("variant", "backend", "threads", "MB", "load ms", "encoder ms", "TTFT ms", "decode tok/s"),
                           rows)]

    # --- the report ------------------------------------------------------------------------------------

    def report_axes(self, gated: bool) -> ReportAxes:
        return ReportAxes("mean KL vs fp32 (lower is better)", False, "decode ms per token (p50)")

    def report_accuracy(self, gate: dict | None, reference_gates: list[dict], parity: dict | None) -> tuple[float, dict]:
        if gate is None:
            return 0.0, {"top-1": 1.0}
        return gate["kld_mean"], {"top-1": gate["top1"]}

    def report_latency(self, result: dict) -> tuple[float, dict]:
        return result["decode_token_latency"].get("p50_ms", float("nan")), {
            "encoder ms": result["encoder_ms"], "decode tok/s": result["decode_tokens_per_s"]}


def translate(session: Any, texts: list[str], max_new_tokens: int = 64, batch_size: int = 16) -> list[str]:
    """Each text through the encoder and greedy decoding with the cache, until an end token or `max_new_tokens`."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InputError("translate takes a list of strings")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    from edgetx.kinds.encoder import text_feeds

    runs, inputs = _runs(session)
    model, tokenizer = session.model, session.tokenizer
    limit = min(max_new_tokens, model.get("max_target_positions", max_new_tokens + 1) - 1)
    eos = set(session.bundle.manifest["tokenizer"].get("eos_token_ids") or [])
    out = []
    batch_size = rows_per_run(model, batch_size)
    for first in range(0, len(texts), batch_size):
        chunk = texts[first : first + batch_size]
        ids, types = tokenizer.encode_batch(chunk, model["max_positions"])
        feeds = text_feeds(session.component("encoder"), ids, types)
        tokens, _ = greedy(runs, inputs, feeds, int(model["decoder_start_token_id"]), limit,
                           model.get("forced_bos_token_id"), eos)
        for row in tokens:
            row = list(row)
            end = next((i for i, t in enumerate(row) if t in eos), len(row))
            out.append(tokenizer.decode(row[:end]))
    return out
