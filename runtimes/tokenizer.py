"""Tokenizers the runtime can use, chosen by the manifest's `tokenizer` block.

`bytes`: the reference model's byte vocabulary. `hf`: a `tokenizer.json` that travels in the
bundle, run by the `tokenizers` library (no transformers at run time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from edgetx.errors import BundleError, InputError

if TYPE_CHECKING:
    from edgetx.bundle import Bundle


class Tokenizer(Protocol):
    vocab_size: int
    eos_token_ids: frozenset[int]
    pad_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and type ids per text, truncated to max_length (special tokens included)."""

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; an incomplete trailing character shows as U+FFFD."""


class ByteTokenizer:
    """The reference model's vocabulary: token id = byte value of the UTF-8 text."""

    vocab_size = 256
    eos_token_ids: frozenset[int] = frozenset()
    pad_token_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        ids = [self.encode(t)[:max_length] for t in texts]
        return ids, [[0] * len(i) for i in ids]

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face fast tokenizer from its tokenizer.json."""

    def __init__(self, path, spec: dict, truncate_to: int | None = None):
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError:
            raise BundleError("this bundle's tokenizer needs the tokenizers package: pip install tokenizers") from None
        try:
            self._tk = _Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable files
            raise BundleError(f"{path}: not a readable tokenizer.json ({e})") from None
        # tokenizer.json may carry padding/truncation settings from training; the runtime pads
        # itself, and truncates (keeping special tokens) only where asked, e.g. for encoders.
        self._tk.no_padding()
        self._tk.no_truncation()
        if truncate_to:
            self._tk.enable_truncation(max_length=truncate_to)
        self.vocab_size = self._tk.get_vocab_size(with_added_tokens=True)
        self.eos_token_ids = frozenset(spec.get("eos_token_ids") or [])
        self.pad_token_id = spec.get("pad_token_id") or 0
        self.spec = spec

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=True).ids

    def encode_batch(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        encodings = self._tk.encode_batch(texts, add_special_tokens=True)
        if any(len(e.ids) > max_length for e in encodings):
            raise InputError(f"a text is longer than {max_length} tokens; load the tokenizer with truncate_to")
        return [e.ids for e in encodings], [e.type_ids for e in encodings]

    def decode(self, ids: list[int]) -> str:
        return self._tk.decode(ids, skip_special_tokens=True)


def tokenizer_for(bundle: "Bundle") -> ByteTokenizer | HFTokenizer:
    """The bundle's tokenizer. Encoders truncate long texts to the model's context (as
    sentence-transformers does); decoders never truncate silently."""
    spec = bundle.manifest.get("tokenizer") or {}
    kind = spec.get("type")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "hf":
        truncate_to = bundle.model.get("max_positions") if bundle.model.get("kind") == "encoder" else None
        return HFTokenizer(bundle.file(spec["file"]), spec, truncate_to=truncate_to)
    raise BundleError(f"{bundle.path}: manifest tokenizer type {kind!r} is not supported by this edgetx "
                      "(known: 'bytes', 'hf')")


def apply_chat_template(spec: dict, messages: list[dict[str, str]]) -> str:
    """Format chat messages with the bundle's chat template (Jinja, sandboxed), ready for generation."""
    template = spec.get("chat_template")
    if not template:
        raise InputError("this bundle's tokenizer has no chat template; pass the prompt as plain text")
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise InputError("chat templates need jinja2: pip install jinja2") from None

    def raise_exception(message):
        raise InputError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=spec.get("bos_token") or "", eos_token=spec.get("eos_token") or "")
