"""Speculative decoding with a draft model: a smaller model of the same vocabulary proposes the next tokens.

The draft (another variant of the same bundle, such as its int4 next to fp32, or another bundle with the same
tokenizer) decodes a few tokens greedily on its own KV cache; one run of the target model over the pending token
and the draft checks them all, and greedy decoding keeps the draft's longest prefix the target itself would have
picked, then the target's own next token (edgetx.runtimes.generate.Generator.continue_from). The output is the
target's greedy output; the speed-up is the tokens taken per target run against what the draft's runs cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgetx.errors import InputError

if TYPE_CHECKING:
    from edgetx.runtimes.generate import Generator


def check_draft(target: Generator, draft: Generator) -> None:
    """Refuse a draft model whose token ids mean other tokens than the target's."""
    if draft.vocab_size != target.vocab_size:
        raise InputError(f"the draft model {draft.session.bundle.path} has a vocabulary of {draft.vocab_size} tokens and "
                         f"the model {target.session.bundle.path} {target.vocab_size}: a draft must share the tokenizer")
    ours, theirs = (g.session.bundle.manifest.get("tokenizer") or {} for g in (target, draft))
    files = [g.session.bundle.manifest.get("files", {}).get(spec.get("file", ""), {}) for g, spec in
             ((target, ours), (draft, theirs))]
    if ours.get("type") != theirs.get("type") or (files[0] or files[1]) and files[0] != files[1]:
        raise InputError(f"the draft model {draft.session.bundle.path} has another tokenizer than "
                         f"{target.session.bundle.path}; pick a variant of the same bundle or a model with the same "
                         "tokenizer file")


class DraftModel:
    """Drafts from a smaller model's greedy decoding, its cache kept in step with the accepted text."""

    def __init__(self, generator: Generator, context: list[int]):
        self.generator = generator
        self.context = list(context)  # every token known so far; the last one is not in the target's cache yet
        self.loop = generator.new_loop(len(context) + 64)
        self.drafted: list[int] = []

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens the draft model picks greedily after the context."""
        room = min(limit, self.generator.max_positions - len(self.context))
        self.drafted = []
        feed = self.context[self.loop.past :]
        for _ in range(room):
            logits = self.loop.prefill(np.array([feed], np.int64), logits_to_keep=1)["logits"][0, -1]
            self.drafted.append(int(np.argmax(logits)))
            feed = self.drafted[-1:]
        return list(self.drafted)

    def extend(self, tokens: list[int]) -> None:
        """The tokens the target took: the draft's cache keeps the context and the drafted tokens it agrees with."""
        agreed = 0
        for mine, taken in zip(self.drafted[:-1], tokens):  # the last drafted token was never fed
            if mine != taken:
                break
            agreed += 1
        self.loop.truncate(min(self.loop.past, len(self.context) + agreed))
        self.context.extend(tokens)
        self.drafted = []
