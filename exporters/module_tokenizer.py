"""The tokenizer a plain nn.Module's bundle carries: a `tokenizers.Tokenizer` from whatever the user has
(a tokenizers object, a tokenizer.json path, a transformers fast tokenizer), its manifest block and file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetx.errors import EdgetxError

Inputs = Sequence[str] | Sequence[Sequence[int]]  # texts (with a tokenizer) or token ids


@dataclass
class BundleTokenizer:
    """A tokenizer as the bundle carries it: a `tokenizers.Tokenizer`, its manifest block and its file."""

    backend: Any  # tokenizers.Tokenizer (padding and truncation off, as the runtime runs it)
    block: dict
    json: bytes

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def encode_batch(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        """Ids and type ids, cut to `max_length` tokens as the encoder runtime cuts them."""
        self.backend.enable_truncation(max_length=max_length)
        try:
            encodings = self.backend.encode_batch(texts)
        finally:
            self.backend.no_truncation()
        return [e.ids for e in encodings], [e.type_ids for e in encodings]


def bundle_tokenizer(tokenizer: Any, eos_token_ids: Sequence[int] | None = None) -> BundleTokenizer | None:
    """A `tokenizers.Tokenizer`, a path to tokenizer.json (or its folder), or a transformers fast tokenizer;
    None stays None (the bundle then takes token ids only)."""
    if tokenizer is None:
        return None
    from tokenizers import Tokenizer

    special: dict = {}
    if isinstance(tokenizer, (str, Path)):
        path = Path(tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise EdgetxError(f"{path}: no such tokenizer file; give the path of a tokenizer.json")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises its own exception type
            raise EdgetxError(f"{path}: not a tokenizer.json the tokenizers library can read ({e})") from None
    elif isinstance(tokenizer, Tokenizer):
        backend = tokenizer
    elif hasattr(tokenizer, "is_fast"):  # a transformers tokenizer
        if not tokenizer.is_fast:
            raise EdgetxError(f"{type(tokenizer).__name__} is a slow (Python) tokenizer; edgetx's runtime needs a "
                              "fast one (tokenizer.json): load it with AutoTokenizer.from_pretrained(..., "
                              "use_fast=True)")
        backend = tokenizer.backend_tokenizer
        eos = tokenizer.eos_token_id
        template = getattr(tokenizer, "chat_template", None)
        special = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
                   "pad_token_id": tokenizer.pad_token_id, "eos_token_ids": [eos] if isinstance(eos, int) else [],
                   "chat_template": template if isinstance(template, str) else None}
    else:
        raise EdgetxError(f"tokenizer must be a tokenizers.Tokenizer, a path to tokenizer.json or a transformers "
                          f"fast tokenizer, not {type(tokenizer).__name__}")
    text = backend.to_str()
    backend = Tokenizer.from_str(text)
    backend.no_padding()
    backend.no_truncation()
    pad = special.get("pad_token_id")
    if pad is None:
        pad = next((i for t in ("[PAD]", "<pad>", "<|pad|>") if (i := backend.token_to_id(t)) is not None), 0)
    block = {"type": "hf", "file": "tokenizer/tokenizer.json", "bos_token": None, "eos_token": None,
             "chat_template": None, **special, "pad_token_id": pad,
             "eos_token_ids": sorted(set(special.get("eos_token_ids", []) if eos_token_ids is None else eos_token_ids))}
    return BundleTokenizer(backend, block, text.encode("utf-8"))


def token_ids(items: Inputs, tokenizer: BundleTokenizer | None, what: str) -> list[list[int]]:
    """Token ids of `items`: texts go through the tokenizer, id lists are taken as they are."""
    out = []
    for item in items:
        if isinstance(item, str):
            if tokenizer is None:
                raise EdgetxError(f"{what} holds text ({item[:40]!r}) but no tokenizer was given: pass tokenizer=... "
                                  "or give token ids (lists of ints)")
            out.append(tokenizer.encode(item))
        else:
            ids = [int(t) for t in item]
            if not ids:
                raise EdgetxError(f"{what}: an entry is empty; every prompt needs at least one token")
            out.append(ids)
    return out


def tokenizer_block(tokenizer: BundleTokenizer | None, notes: list[str],
                     eos_token_ids: Sequence[int] | None = None) -> dict:
    if tokenizer is None:
        notes.append("no tokenizer: the bundle takes and gives token ids only")
        return {"type": "ids", "eos_token_ids": sorted(set(eos_token_ids or [])), "pad_token_id": 0}
    return tokenizer.block


def tokenizer_files(tokenizer: BundleTokenizer | None) -> dict[str, bytes]:
    return {"tokenizer/tokenizer.json": tokenizer.json} if tokenizer is not None else {}
