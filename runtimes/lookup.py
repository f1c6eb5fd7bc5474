"""Prompt lookup: draft tokens for speculative decoding without a draft model.

The tokens that followed the most recent earlier occurrence of the text's last n tokens (n from `max_ngram` down
to `min_ngram`: a single matching token drafts mostly noise, each draft costing the run more positions) are
proposed as the next ones; one run of the model over the pending token and the draft checks them all,
and greedy decoding keeps the draft's longest prefix the model itself would have picked, then the model's own
next token. Output that copies from its context (code edits, quoting, summaries) gets several tokens per run;
the result is the same as plain greedy decoding.
"""

from __future__ import annotations


class PromptLookup:
    """An index of the text's n-grams to where their latest earlier occurrence is continued."""

    def __init__(self, tokens: list[int], max_ngram: int = 3, min_ngram: int = 2):
        self.tokens: list[int] = []
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.continued: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram + 1)]
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        """Append tokens; each n-gram that now has a token after it points to that token's position."""
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending just before `token` are continued at `end`
            for n in range(1, min(self.max_ngram, end) + 1):
                self.continued[n][tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the longest matching suffix before; [] when none matches."""
        if limit < 1:
            return []
        for n in range(min(self.max_ngram, len(self.tokens)), self.min_ngram - 1, -1):
            start = self.continued[n].get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + limit]
        return []
