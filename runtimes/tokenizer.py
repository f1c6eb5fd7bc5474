"""Tokenizers the runtime can use, chosen by the manifest's `tokenizer` block."""

from __future__ import annotations

from typing import Protocol

from edgetx.errors import BundleError


class Tokenizer(Protocol):
    vocab_size: int
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; an incomplete trailing character shows as U+FFFD."""


class ByteTokenizer:
    """The reference model's vocabulary: token id = byte value of the UTF-8 text."""

    vocab_size = 256
    eos_token_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def tokenizer_for(spec: dict) -> Tokenizer:
    kind = spec.get("type")
    if kind == "bytes":
        return ByteTokenizer()
    raise BundleError(f"manifest tokenizer type {kind!r} is not supported by this edgetx (known: 'bytes')")
