"""Tokenizers the runtime can use, chosen by the manifest's `tokenizer` block.

`bytes`: the reference model's byte vocabulary. `hf`: a `tokenizer.json` that travels in the
bundle, run by the `tokenizers` library (no transformers at run time). `ids`: no tokenizer (a module
built without one); the bundle takes and gives token ids only.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from edgetx.errors import BundleError, InputError

T = TypeVar("T")

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


def check_text(text: object) -> str:
    """`text` if it is a str that UTF-8 can encode; else an InputError naming the problem."""
    if not isinstance(text, str):
        raise InputError(f"text to tokenize must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"the text holds a lone surrogate {text[e.start]!r} at index {e.start}, which is not "
                         "valid Unicode; decode input bytes with errors='replace'") from None
    return text


def _guarded(path: object, what: str, call: Callable[[], T]) -> T:
    """Run a call into the tokenizers library, turning its errors (including Rust panics, which
    are not Exceptions) into a BundleError that names the tokenizer file."""
    try:
        return call()
    except (KeyboardInterrupt, SystemExit, InputError):
        raise
    except BaseException as e:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
        raise BundleError(f"{path}: the tokenizer failed to {what} ({type(e).__name__}: {str(e)[:200]}); the "
                          "bundle's tokenizer.json is damaged or unsupported, rebuild the bundle") from None


class ByteTokenizer:
    """The reference model's vocabulary: token id = byte value of the UTF-8 text."""

    vocab_size = 256
    eos_token_ids: frozenset[int] = frozenset()
    pad_token_id = 0

    def encode(self, text: str) -> list[int]:
        return list(check_text(text).encode("utf-8"))

    def encode_batch(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        ids = [self.encode(t)[:max_length] for t in texts]
        return ids, [[0] * len(i) for i in ids]

    def decode(self, ids: list[int]) -> str:
        try:
            return bytes(ids).decode("utf-8", errors="replace")
        except (ValueError, TypeError):
            raise InputError(f"byte token ids must be integers in [0, 256), got {list(ids)[:8]!r}") from None


class IdsOnly:
    """A bundle built without a tokenizer: token ids in and out; text needs a tokenizer of the caller's."""

    def __init__(self, spec: dict, vocab_size: int | None):
        self.vocab_size = vocab_size or 0
        self.eos_token_ids = frozenset(spec.get("eos_token_ids") or [])
        self.pad_token_id = spec.get("pad_token_id") or 0

    def _refuse(self, what: str):
        raise InputError(f"this bundle was built without a tokenizer, so it cannot {what}: give token ids "
                         "(Generator.tokens(ids), Session.run), pass a tokenizer of your own "
                         "(Generator(session, tokenizer)), or rebuild with one")

    def encode(self, text: str) -> list[int]:
        self._refuse("encode text")

    def encode_batch(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        self._refuse("encode text")

    def decode(self, ids: list[int]) -> str:
        self._refuse("decode token ids to text")


class HFTokenizer:
    """A Hugging Face fast tokenizer from its tokenizer.json."""

    def __init__(self, path, spec: dict, truncate_to: int | None = None):
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError:
            raise BundleError("this bundle's tokenizer needs the tokenizers package: pip install tokenizers") from None
        self.path = path
        self._tk = _guarded(path, "load", lambda: _Tokenizer.from_file(str(path)))
        # tokenizer.json may carry padding/truncation settings from training; the runtime pads
        # itself, and truncates (keeping special tokens) only where asked, e.g. for encoders.
        self._tk.no_padding()
        self._tk.no_truncation()
        if truncate_to:
            _guarded(path, "set truncation", lambda: self._tk.enable_truncation(max_length=truncate_to))
        self.vocab_size = self._tk.get_vocab_size(with_added_tokens=True)
        self.eos_token_ids = frozenset(spec.get("eos_token_ids") or [])
        self.pad_token_id = spec.get("pad_token_id") or 0
        self.spec = spec

    def encode(self, text: str) -> list[int]:
        check_text(text)
        return _guarded(self.path, "encode", lambda: self._tk.encode(text, add_special_tokens=True).ids)

    def encode_batch(self, texts: list[str], max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        for text in texts:
            check_text(text)
        encodings = _guarded(self.path, "encode", lambda: self._tk.encode_batch(texts, add_special_tokens=True))
        if any(len(e.ids) > max_length for e in encodings):
            raise InputError(f"a text is longer than {max_length} tokens; load the tokenizer with truncate_to")
        return [e.ids for e in encodings], [e.type_ids for e in encodings]

    def encode_words(self, texts: list[str], max_length: int) -> list[tuple[list[int], list[int], list[int | None],
                                                                         list[tuple[int, int]]]]:
        """Per text: token ids, type ids, the word each token belongs to (None = special token) and its
        character span in the text (for tagging words with token-level labels)."""
        for text in texts:
            check_text(text)
        encodings = _guarded(self.path, "encode", lambda: self._tk.encode_batch(texts, add_special_tokens=True))
        if any(len(e.ids) > max_length for e in encodings):
            raise InputError(f"a text is longer than {max_length} tokens; load the tokenizer with truncate_to")
        return [(e.ids, e.type_ids, e.word_ids, e.offsets) for e in encodings]

    def decode(self, ids: list[int]) -> str:
        try:
            ids = [operator.index(i) for i in ids]
        except TypeError:
            raise InputError(f"token ids to decode must be integers, got {ids!r:.80}") from None
        if not all(0 <= i < 1 << 32 for i in ids):
            raise InputError(f"token ids to decode must be in [0, 2**32), got {ids[:8]!r}")
        return _guarded(self.path, "decode", lambda: self._tk.decode(ids, skip_special_tokens=True))


def tokenizer_for(bundle: "Bundle") -> ByteTokenizer | HFTokenizer | IdsOnly:
    """The bundle's tokenizer. Kinds that truncate long texts (encoders, as sentence-transformers does)
    cut them to the model's context; the others never truncate silently."""
    where = f"{bundle.path / 'manifest.json'}: tokenizer"
    spec = bundle.manifest.tokenizer  # its form is checked at load (the manifest schema)
    kind = spec.get("type")
    if kind == "bytes":
        return ByteTokenizer()
    if kind == "ids":
        return IdsOnly(spec, bundle.model.get("vocab_size"))
    if kind == "hf":
        rel = spec.get("file")
        if rel not in bundle.manifest.files:
            raise BundleError(f"{where}.file {rel!r} must name a file listed under 'files' (so its hash is checked)")
        from edgetx.kinds import get_kind

        truncates = get_kind(bundle.model.get("kind"), bundle.path / "manifest.json").truncates_text
        truncate_to = bundle.model.get("max_positions") if truncates else None
        return HFTokenizer(bundle.file(rel), spec, truncate_to=truncate_to)
    raise BundleError(f"{bundle.path}: manifest tokenizer type {kind!r} is not supported by this edgetx "
                      "(known: 'bytes', 'hf', 'ids')")


def apply_chat_template(spec: dict, messages: list[dict[str, str]]) -> str:
    """Format chat messages with the bundle's chat template (Jinja, sandboxed), ready for generation."""
    template = spec.get("chat_template")
    if not template:
        raise InputError("this bundle's tokenizer has no chat template; pass the prompt as plain text")
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise InputError("chat templates need jinja2: pip install jinja2") from None

    def raise_exception(message):
        raise InputError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(str(template)).render(messages=messages, add_generation_prompt=True,
                                                     bos_token=spec.get("bos_token") or "",
                                                     eos_token=spec.get("eos_token") or "")
    except (TemplateError, TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
        # SecurityError (a template reaching outside the sandbox) is a TemplateError
        raise BundleError(f"the bundle's chat template failed ({type(e).__name__}: {str(e)[:200]}); it is damaged "
                          "or hostile, pass the prompt as plain text or rebuild the bundle") from None
