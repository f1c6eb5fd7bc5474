"""`ChatSession`: a conversation with a causal-LM bundle that keeps its KV cache from turn to turn.

Each turn renders the whole history with the bundle's chat template, as a fresh run would, tokenizes it, and
feeds only the tokens after the longest prefix the cache already holds (the cache is cut back to that prefix
when the template renders earlier turns differently, or the reply re-tokenizes otherwise). So turn N costs its
new tokens, not the whole history, and its reply is the one a fresh run over the same history gives.

    chat = ChatSession(Generator(Session("dist/smollm2")), system="You are terse.")
    print(chat.send("What is a binary search?"))
    print(chat.send("And its complexity?"))
"""

from __future__ import annotations

from edgetx.errors import InputError
from edgetx.runtimes.generate import GenerationConfig, GenerationStats, Generator
from edgetx.runtimes.tokenizer import apply_chat_template


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading token ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ChatSession:
    """Messages so far (`messages`), and the cache of the tokens the model has seen (`cached_ids`)."""

    def __init__(self, generator: Generator, system: str | None = None):
        self.generator = generator
        self.spec = generator.session.bundle.manifest["tokenizer"]
        if not self.spec.get("chat_template"):
            raise InputError(f"{generator.session.bundle.path}: its tokenizer has no chat template, so it has no chat "
                             "turns to keep; use Generator.generate on plain text")
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        self.loop = generator.new_loop(1024)  # room for the first turns; a bound in-place cache doubles when full
        self.cached_ids: list[int] = []  # what the cache holds, position by position
        self.reused_tokens = 0  # of the last turn's prompt, how many came from the cache

    def prompt_ids(self) -> list[int]:
        """The token ids of the whole history, rendered for the next reply (what a fresh run would feed)."""
        return self.generator.tokenizer.encode(apply_chat_template(self.spec, self.messages))

    def send(self, message: str, config: GenerationConfig | None = None) -> str:
        """Add a user message, generate the reply (kept in the history), and return its text."""
        if not isinstance(message, str) or not message:
            raise InputError("send takes a non-empty message (a string)")
        config = config or GenerationConfig()
        config.check()
        self.messages.append({"role": "user", "content": message})
        try:
            ids = self.generator.check_prompt(self.prompt_ids(), "the conversation")
        except InputError:
            self.messages.pop()
            raise
        keep = min(common_prefix(self.cached_ids, ids), len(ids) - 1)  # at least one token to feed
        # the cache back to what this turn shares with the last (the history may render otherwise from there)
        self.loop.truncate(keep)
        self.cached_ids, self.reused_tokens = ids[:keep], keep
        self.generator.stats = GenerationStats(prompt_tokens=len(ids) - keep)
        generated: list[int] = []
        try:
            reply = "".join(self.generator.text_of(
                _recording(self.generator.continue_from(self.loop, ids[keep:], config, ids[:keep]), generated), config))
        except BaseException:  # the turn did not happen: the cache keeps only what the next turn can trust
            self.messages.pop()
            self.loop.truncate(min(keep, self.loop.past))
            raise
        self.cached_ids = ids + generated[:-1]  # the last token picked is never fed
        self.messages.append({"role": "assistant", "content": reply})
        return reply

    @property
    def finish_reason(self) -> str | None:
        return self.generator.finish_reason


def _recording(tokens, into: list[int]):
    """Pass `tokens` through, appending each to `into`."""
    for token in tokens:
        into.append(token)
        yield token
