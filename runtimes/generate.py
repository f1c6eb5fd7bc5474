"""`Generator`: text generation on a causal-LM bundle, reusing the KV cache between steps.

The prompt is run once (prefill); each new token then runs alone with the cache the
previous step returned (decode). Tokens stream out as an iterator.

    gen = Generator(Session("dist/edgetx-gpt"))
    for piece in gen.stream("def fib(n):", GenerationConfig(max_new_tokens=64)):
        print(piece, end="")
"""

from __future__ import annotations

import codecs
import operator
import time
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from edgetx.bundle import MANIFEST
from edgetx.errors import BackendError, BundleError, InputError
from edgetx.kinds import require_helper
from edgetx.kinds.base import rows_per_run
from edgetx.kinds.decoding import DecodeLoop, decode_loop
from edgetx.runtimes.batch import batch_generate
from edgetx.runtimes.draft import DraftModel, check_draft
from edgetx.runtimes.lookup import PromptLookup
from edgetx.runtimes.session import Session
from edgetx.runtimes.tokenizer import Tokenizer

@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches p
    seed: int | None = None  # for sampling; same seed, same text
    stop: tuple[bytes, ...] = ()  # stop when the output contains one of these (not emitted)
    prompt_lookup: int = 0  # greedy: draft up to this many tokens from the context and check them in one run
    draft_tokens: int = 0  # greedy: draft up to this many tokens with the Generator's draft model, checked in one run

    def check(self) -> None:
        for name, kinds in (("max_new_tokens", Integral), ("temperature", Real), ("top_k", (Integral, type(None))),
                            ("top_p", (Real, type(None))), ("seed", (Integral, type(None))), ("stop", (tuple, list)),
                            ("prompt_lookup", Integral), ("draft_tokens", Integral)):
            value = getattr(self, name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise InputError(f"GenerationConfig.{name} has the wrong type: {value!r}")
        if not np.isfinite(self.temperature):
            raise InputError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and self.seed < 0:
            raise InputError(f"seed must be >= 0, got {self.seed}")
        if any(not isinstance(s, bytes) or not s for s in self.stop):
            raise InputError("stop sequences must be non-empty bytes")
        if self.prompt_lookup < 0:
            raise InputError(f"prompt_lookup must be >= 0 (draft tokens per run; 0 = off), got {self.prompt_lookup}")
        if self.prompt_lookup and self.temperature != 0:
            raise InputError("prompt lookup drafts are checked by greedy decoding: use it with temperature 0")
        if self.draft_tokens < 0:
            raise InputError(f"draft_tokens must be >= 0 (tokens the draft model proposes per run; 0 = off), got "
                             f"{self.draft_tokens}")
        if self.draft_tokens and self.temperature != 0:
            raise InputError("a draft model's tokens are checked by greedy decoding: use it with temperature 0")
        if self.draft_tokens and self.prompt_lookup:
            raise InputError("draft with prompt lookup or with a draft model, not both")


def sample_next(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    """Pick the next token from one row of logits: greedy, or temperature/top-k/top-p sampling."""
    if config.temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / config.temperature
    if config.top_k is not None and config.top_k < scaled.size:
        kth = np.partition(scaled, -config.top_k)[-config.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if config.top_p is not None and config.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, config.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


class _StopFilter:
    """Holds back output bytes that might be the start of a stop sequence."""

    def __init__(self, stops: tuple[bytes, ...]):
        self.stops, self.buffer, self.emitted, self.stopped = stops, b"", 0, False

    def push(self, data: bytes) -> bytes:
        self.buffer += data
        hits = [i for i in (self.buffer.find(s, self.emitted) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(min(hits))
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        return self._release(len(self.buffer) - hold)

    def flush(self) -> bytes:
        return b"" if self.stopped else self._release(len(self.buffer))

    def _release(self, end: int) -> bytes:
        out, self.emitted = self.buffer[self.emitted : end], max(self.emitted, end)
        return out


@dataclass
class GenerationStats:
    """Timings of the last run: time to first token and decode speed."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    runs: int = 0  # model runs (with prompt lookup, one run may give several tokens)
    drafted: int = 0  # prompt-lookup tokens proposed
    accepted: int = 0  # of those, the ones the model picked too

    def add_step(self, seconds: float, prefill: bool, tokens: int = 1) -> None:
        self.new_tokens += tokens
        self.runs += 1
        if prefill:
            self.prefill_seconds += seconds
        else:
            self.decode_seconds += seconds

    @property
    def decode_tokens_per_second(self) -> float | None:
        steps = self.new_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else None

    def summary(self) -> str:
        text = f"{self.prompt_tokens} prompt tokens, first token after {self.prefill_seconds * 1e3:.1f} ms"
        if self.decode_tokens_per_second:
            text += f", {self.new_tokens} new tokens at {self.decode_tokens_per_second:.1f} tokens/s"
        if self.drafted:
            text += f"; speculative: {self.accepted} of {self.drafted} drafted tokens accepted, {self.runs} runs"
        return text


class Generator:
    """Prefill + decode loop over a Session of a causal-LM bundle."""

    def __init__(self, session: Session, tokenizer: Tokenizer | None = None, bind_cache: bool = True,
                 draft: Generator | Session | None = None):
        model = session.model
        require_helper(session.kind, "generate", session.bundle.path)
        if not all(isinstance(model.get(key), int) for key in ("vocab_size", "max_positions")):
            raise BundleError(f"{session.bundle.path / MANIFEST}: a causal-lm needs model.vocab_size and "
                              "model.max_positions (positive integers)")
        self.session = session
        self.tokenizer = tokenizer or session.tokenizer
        self.max_positions: int = model["max_positions"]
        self.vocab_size: int = model["vocab_size"]
        self.finish_reason: str | None = None  # "length", "context", "stop" or "eos" after a run
        self.finish_reasons: list[str] = []  # each row's, after tokens_batch / generate_batch
        self.stats = GenerationStats()
        self.bind_cache = bind_cache  # keep the KV cache bound to the backend (no copy per step) where it can
        # a smaller model of the same vocabulary (e.g. the bundle's int4 variant) for GenerationConfig.draft_tokens
        self.draft = Generator(draft, bind_cache=bind_cache) if isinstance(draft, Session) else draft
        if self.draft is not None:
            check_draft(self, self.draft)

    def new_loop(self, positions: int | None = None) -> DecodeLoop:
        """A decode loop with an empty cache, for a run of about `positions` positions in all (room preallocated
        where the cache stays bound in place; it grows past that if needed)."""
        capacity = min(positions, self.max_positions) if positions else None
        return decode_loop(self.session, capacity, self.bind_cache)

    def check_prompt(self, prompt_ids: list[int], what: str = "the prompt") -> list[int]:
        """The prompt's token ids as ints, refused if empty, outside the vocabulary or too long for the model."""
        try:
            ids = [operator.index(t) for t in prompt_ids]
        except TypeError:
            raise InputError(f"prompt token ids must be integers (e.g. from tokenizer.encode), got {prompt_ids!r:.80}"
                             ) from None
        if not ids:
            raise InputError(f"{what} is empty; give at least one token")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InputError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        if len(ids) + 1 > self.max_positions:
            raise InputError(f"{what} has {len(ids)} tokens; this model sees at most {self.max_positions} "
                             f"positions in all, so shorten {what}")
        return ids

    def tokens(self, prompt_ids: list[int], config: GenerationConfig | None = None) -> Iterator[int]:
        """Yield new token ids one at a time (batch 1)."""
        config = config or GenerationConfig()
        config.check()
        ids = self.check_prompt(prompt_ids)
        self.stats = GenerationStats(prompt_tokens=len(ids))
        loop = self.new_loop(len(ids) + config.max_new_tokens + config.prompt_lookup + config.draft_tokens)
        yield from self.continue_from(loop, ids, config)

    def continue_from(self, loop: DecodeLoop, ids: list[int], config: GenerationConfig,
                      history: list[int] = ()) -> Iterator[int]:
        """Feed `ids` on top of `loop`'s cache (which holds `history`), then yield new token ids one at a time; the
        last one yielded is not fed (the cache then holds everything before it). A chat session continues its own
        loop this way. With `config.prompt_lookup`, each run also checks tokens drafted from the context
        (edgetx.runtimes.lookup), with `config.draft_tokens` tokens the draft model proposes (edgetx.runtimes.draft):
        the same tokens as without, in fewer runs where the drafts are right."""
        rng = np.random.default_rng(config.seed)
        if config.draft_tokens and self.draft is None:
            raise InputError("draft_tokens needs a draft model: Generator(session, draft=Session(bundle, "
                             "variant='int4')) or `--draft-variant` on the command line")
        lookup = PromptLookup([*history, *ids]) if config.prompt_lookup else \
            DraftModel(self.draft, [*history, *ids]) if config.draft_tokens else None
        maximum = config.prompt_lookup or config.draft_tokens
        limit = maximum  # drafts grow while the model takes them whole, shrink when it does not
        self.finish_reason = None
        feed, produced = list(ids), 0
        while True:
            if produced == config.max_new_tokens:
                self.finish_reason = "length"
                return
            if loop.past + len(feed) > self.max_positions:
                self.finish_reason = "context"
                return
            room = min(limit, config.max_new_tokens - produced - 1, self.max_positions - loop.past - len(feed))
            started = time.perf_counter()  # a draft model's runs count in the step's time
            draft = lookup.draft(room) if lookup is not None and produced else []
            past = loop.past
            outputs = loop.prefill(np.array([feed + draft], dtype=np.int64), logits_to_keep=1 + len(draft))
            logits = outputs["logits"][0, -1 - len(draft):]
            if not np.isfinite(logits).all():
                raise BackendError(f"{self.session.model_path} produced non-finite logits (NaN/inf) at position {loop.past}: "
                                   "the variant is damaged or numerically unstable; check it with `edgetx verify`")
            if draft:  # the draft's prefix the model picks too, then the model's own next token
                picks = logits.argmax(-1)
                accepted = next((i for i, (d, p) in enumerate(zip(draft, picks)) if d != p), len(draft))
                new = [int(t) for t in picks[: accepted + 1]]
                loop.truncate(past + len(feed) + accepted)
                self.stats.drafted, self.stats.accepted = self.stats.drafted + len(draft), self.stats.accepted + accepted
                limit = min(limit + 2, maximum) if accepted == len(draft) else max(1, limit - 1)
            else:
                new = [sample_next(logits[-1], config, rng)]
            self.stats.add_step(time.perf_counter() - started, prefill=produced == 0, tokens=len(new))
            for token in new:
                produced += 1
                yield token
                if token in self.tokenizer.eos_token_ids:
                    self.finish_reason = "eos"
                    return
                if produced == config.max_new_tokens:
                    self.finish_reason = "length"
                    return
            if lookup is not None:
                lookup.extend(new)
            feed = [new[-1]]

    def stream(self, prompt: str | list[int], config: GenerationConfig | None = None) -> Iterator[str]:
        """Yield text as it is generated; stop sequences end the text and are not included.

        The generated ids are decoded as a whole each step (tokenizers merge pieces, e.g. a
        character split over byte tokens), and text is held back while it ends in an
        incomplete character or could be the start of a stop sequence.
        """
        config = config or GenerationConfig()
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        yield from self.text_of(self.tokens(ids, config), config)

    def text_of(self, tokens: Iterator[int], config: GenerationConfig) -> Iterator[str]:
        """The text of new token ids as `stream` yields it: up to an end token, cut before a stop sequence."""
        stops = _StopFilter(tuple(config.stop))
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # pieces may split a character
        generated: list[int] = []
        released = b""
        for token in tokens:
            if token in self.tokenizer.eos_token_ids:
                break
            generated.append(token)
            text = self.tokenizer.decode(generated)
            if text.endswith("\ufffd"):
                continue  # wait for the rest of the character
            data = text.encode("utf-8")
            piece = stops.push(data[len(released):])
            released = data
            if piece and (text := utf8.decode(piece)):
                yield text
            if stops.stopped:
                self.finish_reason = "stop"
                return
        rest = b""
        if generated:  # whatever was held back waiting for a character to complete
            rest = stops.push(self.tokenizer.decode(generated).encode("utf-8")[len(released):])
        if stops.stopped:
            self.finish_reason = "stop"
        else:
            rest += stops.flush()
        tail = utf8.decode(rest, final=True)
        if tail:
            yield tail

    def generate(self, prompt: str | list[int], config: GenerationConfig | None = None) -> str:
        return "".join(self.stream(prompt, config))

    # --- batches ---------------------------------------------------------------------------------------

    def tokens_batch(self, prompts_ids: list[list[int]], config: GenerationConfig | None = None) -> list[list[int]]:
        """The new token ids of each prompt, generated together: the same as `tokens` gives each prompt alone (each
        row samples from its own generator seeded as a lone run's). Prompts are left-padded into one batch; a row
        that finishes leaves it. A model whose own answer for a row moves inside a padded batch (model.padding)
        runs its prompts one at a time, so the answer never depends on the batch. `finish_reasons` says why each
        row stopped."""
        config = config or GenerationConfig()
        config.check()
        prompts = [self.check_prompt(p, f"prompt {i}") for i, p in enumerate(prompts_ids)]
        if not prompts:
            raise InputError("give at least one prompt")
        size = rows_per_run(self.session.model, len(prompts))
        self.stats = GenerationStats(prompt_tokens=sum(map(len, prompts)))
        results: list[tuple[list[int], str]] = []
        for first in range(0, len(prompts), size):
            results += batch_generate(self, prompts[first : first + size], config)
        self.finish_reasons = [reason for _, reason in results]
        return [tokens for tokens, _ in results]

    def generate_batch(self, prompts: list[str | list[int]], config: GenerationConfig | None = None) -> list[str]:
        """The text of each prompt (as `generate` gives it alone), generated as one batch."""
        config = config or GenerationConfig()
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
            raise InputError("generate_batch takes a list of prompts (strings or token id lists)")
        ids = [self.tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
        return ["".join(self.text_of(iter(tokens), config)) for tokens in self.tokens_batch(ids, config)]
