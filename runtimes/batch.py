"""Batched generation on a causal-LM graph: ragged prompts left-padded into one batch, decoded together.

Rows are left-padded (pads masked out, positions counting real tokens only: what the graph contract's padded
batch is, and what parity checks at build time). Each decode step feeds one token per active row; a row that
ends (an end token, its token budget, a stop sequence, the context) leaves the batch: its cache rows are
dropped, and cache columns that are padding in every remaining row are trimmed, so finished and padded rows stop
costing compute. `Generator.tokens_batch` is the entry point.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from edgetx.errors import BackendError
from edgetx.kinds.decoding import causal_feeds, empty_cache, next_cache

if TYPE_CHECKING:
    from edgetx.runtimes.generate import GenerationConfig, Generator


class _Rows:
    """The active rows of a batch: their index in the caller's list, mask, next position, cache."""

    def __init__(self, prompts: list[list[int]], pad: int, inputs: list[dict]):
        width = max(map(len, prompts))
        self.index = np.arange(len(prompts))
        self.ids = np.full((len(prompts), width), pad, np.int64)
        self.mask = np.zeros((len(prompts), width), np.int64)
        for row, ids in enumerate(prompts):
            self.ids[row, width - len(ids):], self.mask[row, width - len(ids):] = ids, 1
        self.positions = np.clip(np.cumsum(self.mask, axis=1) - 1, 0, None)
        self.cache = empty_cache(inputs, len(prompts))

    def keep(self, rows: np.ndarray) -> None:
        """Only `rows` (a boolean per active row) stay; columns that are padding in all of them are trimmed."""
        self.index, self.mask, self.positions = self.index[rows], self.mask[rows], self.positions[rows]
        self.cache = {k: v[rows] for k, v in self.cache.items()}
        first = int(np.argmax(self.mask.any(axis=0))) if len(self.index) else 0
        if first:
            self.mask, self.cache = self.mask[:, first:], {k: v[:, :, first:] for k, v in self.cache.items()}


def batch_generate(generator: Generator, prompts: list[list[int]], config: GenerationConfig
                   ) -> list[tuple[list[int], str]]:
    """(new token ids, finish reason) per prompt, in order; each as `generator.tokens` gives it alone."""
    from edgetx.runtimes.generate import sample_next

    if config.max_new_tokens == 0:
        return [([], "length") for _ in prompts]
    session, eos = generator.session, set(generator.tokenizer.eos_token_ids)
    rows = _Rows(prompts, generator.tokenizer.pad_token_id or 0, session.inputs)
    rngs = [np.random.default_rng(config.seed) for _ in prompts]  # each row's stream, as in a lone run
    out: list[list[int]] = [[] for _ in prompts]
    reasons = [""] * len(prompts)
    lengths = np.array([len(p) for p in prompts])  # each row's real positions fed so far
    stops = tuple(config.stop)
    feeds = causal_feeds(session.inputs, rows.ids, rows.mask, rows.positions, rows.cache, logits_to_keep=1)
    prefill = True
    while len(rows.index):
        started = time.perf_counter()
        outputs = session.run(feeds)
        seconds = time.perf_counter() - started
        rows.cache = next_cache(outputs, rows.cache)
        logits = outputs["logits"][:, -1]
        if not np.isfinite(logits).all():
            raise BackendError(f"{session.model_path} produced non-finite logits (NaN/inf) in a batch: the variant is "
                               "damaged or numerically unstable; check it with `edgetx verify`")
        picks, stay = [], np.ones(len(rows.index), bool)
        for slot, row in enumerate(rows.index):
            token = sample_next(logits[slot], config, rngs[row])
            out[row].append(token)
            picks.append(token)
            generator.stats.add_step(seconds / len(rows.index), prefill)
            if token in eos:
                reasons[row] = "eos"
            elif len(out[row]) == config.max_new_tokens:
                reasons[row] = "length"
            elif stops and any(s in generator.tokenizer.decode(out[row]).encode("utf-8") for s in stops):
                reasons[row] = "stop"
            elif lengths[row] + 1 > generator.max_positions:
                reasons[row] = "context"
            stay[slot] = not reasons[row]
        prefill = False
        lengths[rows.index] += 1  # the picks are fed next (by the rows that stay)
        step = np.array(picks, np.int64)[:, None]
        next_positions = rows.positions[:, -1:] + 1
        rows.mask = np.concatenate([rows.mask, np.ones((len(rows.index), 1), np.int64)], axis=1)
        rows.positions = next_positions
        if not stay.all():
            step = step[stay]
            rows.keep(stay)
        feeds = causal_feeds(session.inputs, step, rows.mask, rows.positions, rows.cache, logits_to_keep=1)
    return [(tokens, reason) for tokens, reason in zip(out, reasons)]
