"""`Session`: run one variant of a bundle on a backend, with inputs checked first.

Inputs are validated against the manifest's I/O signature (names, dtypes, ranks, fixed and
symbolic dims) and the model's facts (token ids inside the vocabulary, positions and lengths
inside the context, a 0/1 attention mask, finite floats) so that a mistake is reported in
edgetx's words, before onnxruntime sees it. A Session may be shared by threads.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgetx.bundle import MANIFEST, Bundle
from edgetx.bundle.manifest import Variant
from edgetx.errors import BundleError, InputError
from edgetx.kinds.decoding import cache_specs, shares_cache_buffer
from edgetx.runtimes.backend import REFERENCE_BACKEND, CacheBinding, LoopTimings, RunResult, SessionOptions, get_backend
from edgetx.kinds import ModelKind, get_kind, require_helper
from edgetx.runtimes.tokenizer import Tokenizer, tokenizer_for

if TYPE_CHECKING:
    from edgetx.runtimes.image import ImagePreprocessor


def _dim_value(dim: int | str, sizes: dict[str, int]) -> int | None:
    """A dim's expected size: an int, a bound symbol, or a sum like "past+seq"; None if unknown yet."""
    if isinstance(dim, int):
        return dim
    total = 0
    for part in dim.split("+"):
        part = part.strip()
        if part.isdigit():
            total += int(part)
        elif part in sizes:
            total += sizes[part]
        else:
            return None
    return total


# Value ranges of inputs with a known meaning: name -> (low, high or None, what the range is).
Limits = dict[str, tuple[int, int | None, str]]


def validate_inputs(feeds: dict[str, object], inputs: list[dict], limits: Limits | None = None,
                    max_length: int | None = None, unscanned: frozenset[int] = frozenset()) -> dict[str, np.ndarray]:
    """Check feeds against an I/O signature (and, if given, value `limits` and the `max_length` of a
    sequence); return them as numpy arrays or raise InputError. Float inputs must be finite, except
    those whose id() is in `unscanned` (arrays the model itself returned, e.g. a KV cache)."""
    if not isinstance(feeds, dict):
        raise InputError(f"inputs must be a dict of name -> numpy array, got {type(feeds).__name__}")
    expected = {spec["name"]: spec for spec in inputs}
    unknown = sorted(set(feeds) - set(expected))
    missing = [name for name, spec in expected.items() if name not in feeds and not spec.get("optional")]
    expected = {name: spec for name, spec in expected.items() if name in feeds}  # optional ones left out run on their default
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {', '.join(unknown)}")
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        raise InputError(f"{'; '.join(parts)}. The model takes: {', '.join(expected)}")
    arrays: dict[str, np.ndarray] = {}
    for name, spec in expected.items():
        value = feeds[name]
        if not isinstance(value, np.ndarray):
            raise InputError(f"input {name!r}: expected a numpy array of {spec['dtype']}, got {type(value).__name__}")
        if value.dtype != np.dtype(spec["dtype"]):
            raise InputError(f"input {name!r}: expected dtype {spec['dtype']}, got {value.dtype} "
                             f"(convert with .astype(np.{spec['dtype']}))")
        if value.ndim != len(spec["shape"]):
            raise InputError(f"input {name!r}: expected rank {len(spec['shape'])} with shape {spec['shape']}, "
                             f"got shape {list(value.shape)}")
        arrays[name] = value
    # Bind plain symbols first (batch, seq, past), then check every dim including sums.
    sizes: dict[str, int] = {}
    for name, spec in expected.items():
        for axis, dim in enumerate(spec["shape"]):
            actual = arrays[name].shape[axis]
            if isinstance(dim, str) and "+" not in dim:
                if dim in sizes and sizes[dim] != actual:
                    first = next(n for n, s in expected.items() if dim in s["shape"])
                    raise InputError(f"input {name!r}: axis {axis} ({dim}) is {actual} but {first!r} "
                                     f"gives {dim}={sizes[dim]}; all inputs must agree on {dim}")
                sizes[dim] = actual
    for name, spec in expected.items():
        for axis, dim in enumerate(spec["shape"]):
            want = _dim_value(dim, sizes)
            actual = arrays[name].shape[axis]
            if want is not None and want != actual:
                raise InputError(f"input {name!r}: axis {axis} should be {dim}={want} "
                                 f"(shape {spec['shape']} with {sizes}), got {actual}")
    _check_values(arrays, limits or {}, max_length, unscanned)
    return arrays


def _check_values(arrays: dict[str, np.ndarray], limits: Limits, max_length: int | None,
                  unscanned: frozenset[int]) -> None:
    """Token ids, positions and masks inside their ranges, sequences inside the context, floats finite."""
    if "input_ids" in arrays and arrays["input_ids"].size == 0:
        raise InputError(f"input 'input_ids' has shape {list(arrays['input_ids'].shape)}: no tokens; "
                         "give at least one (an empty prompt cannot be run)")
    for name, value in arrays.items():
        if name in limits and value.size and value.dtype.kind in "iu":
            low, high, what = limits[name]
            bad = (value < low) | (value >= high) if high is not None else value < low
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                span = f"[{low}, {high})" if high is not None else f">= {low}"
                noun, _, field = what.partition(" (")
                raise InputError(f"input {name!r}: value {value[index]} at index {index} is outside {noun} {span}"
                                 + (f" ({field}" if field else ""))
        if value.dtype.kind == "f" and id(value) not in unscanned and not np.isfinite(value).all():
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
            raise InputError(f"input {name!r} holds {value[index]} at index {index}; inputs must be finite "
                             "(NaN and inf propagate to every output)")
        if max_length is not None and name in ("input_ids", "attention_mask") and value.ndim == 2 \
                and value.shape[1] > max_length:
            what = "past+seq positions" if name == "attention_mask" else "tokens"
            raise InputError(f"input {name!r} covers {value.shape[1]} {what}; this model sees at most {max_length} "
                             f"(model.max_positions), so shorten the input")


def check_signature(bundle: Bundle, component: str | None = None) -> tuple[list[dict], list[dict], Limits, int | None]:
    """The manifest's io.inputs and io.outputs, or those of one of the model's other graphs (io.components)
    (their form is checked at load against the manifest schema; here: that they are there, with unique names,
    and follow the model kind's contract); and the value limits and maximum length its model facts give."""
    where = bundle.path / MANIFEST
    io, prefix = bundle.io, "io"
    if component is not None:
        io, prefix = (bundle.io.get("components") or {}).get(component), f"io.components.{component}"
        if io is None:
            raise BundleError(f"{where}: no {prefix} (the model's graphs: "
                              f"{', '.join(['main', *(bundle.io.get('components') or {})])})")
    lists = []
    for key in ("inputs", "outputs"):
        specs = io.get(key)
        if not specs:
            raise BundleError(f"{where}: {prefix}.{key} must be a non-empty list of {{name, dtype, shape}}")
        if len({spec["name"] for spec in specs}) != len(specs):
            raise BundleError(f"{where}: {prefix}.{key} names an input or output twice")
        lists.append(specs)
    kind = get_kind(bundle.model.get("kind"), where)
    if problem := (kind.io_problem(*lists) if component is None else kind.component_io_problem(component, *lists)):
        raise BundleError(f"{where}: {problem}")
    vocab, context = bundle.model.get("vocab_size"), bundle.model.get("max_positions")
    limits: Limits = {"attention_mask": (0, 2, "a mask of 0 (padding) and 1 (token)"),
                      "token_type_ids": (0, None, "token types"),
                      "logits_to_keep": (0, None, "a count of last positions (0 = all)")}
    if vocab:
        limits["input_ids"] = (0, vocab, "the vocabulary (model.vocab_size)")
    if context:
        limits["position_ids"] = (0, context, "the model's positions (model.max_positions)")
    return lists[0], lists[1], limits, context


class Session:
    """One variant of a bundle, loaded on a backend.

        session = Session("dist/edgetx-gpt")               # fp32 on onnxruntime CPU
        outputs = session.run({"input_ids": ids, ...})     # dict of numpy arrays
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, variant: "str | Variant" = "fp32", backend: str = REFERENCE_BACKEND,
                 threads: int | None = None, verify_hashes: bool = True, graph_optimization: str | None = None,
                 component: str | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, verify_hashes=verify_hashes)
        self.variant = self.bundle.variant(variant) if isinstance(variant, str) else variant
        self.backend = get_backend(backend)
        self.component_name = component  # None: the variant's main graph; else one of io.components
        model_format = self.backend.capabilities.model_format
        self.model_path: Path = self.bundle.file(self.variant.component_file(component, model_format))
        self.inputs, self.outputs, self._limits, self._max_length = check_signature(self.bundle, component)
        self._options = SessionOptions(threads=threads, graph_optimization=graph_optimization)
        self._session = self.backend.create_session(self.model_path, self._options)
        self._components: dict[str, Session] = {}
        self.last_run_seconds: float | None = None
        self._shared_buffer: bool | None = None  # the graph can keep its KV cache in one buffer (bind_cache)
        self._tokenizer: Tokenizer | None = None
        self._preprocessor: ImagePreprocessor | None = None
        # Float arrays this session returned (e.g. a KV cache passed back as the next step's past)
        # are not re-scanned for NaN/inf: the scan would cost ~7% of a small model's decode step.
        self._returned: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()

    @property
    def model(self) -> dict:
        return self.bundle.model

    @property
    def placement(self) -> dict | None:
        """Where the backend runs each node, for backends that report it (Capabilities.reports_placement)."""
        return self._session.placement

    def close(self) -> None:
        """Release the backend session (a worker process, ...), and those of the model's other graphs."""
        for other in self._components.values():
            other.close()
        self._components.clear()
        self._session.close()

    def component(self, name: str) -> "Session":
        """The same variant's `name` graph (io.components: an encoder-decoder's encoder), on the same backend and
        settings, loaded on first use and closed with this session."""
        if self.component_name is not None:
            raise BundleError(f"{self.model_path}: ask the main graph's session for the model's other graphs")
        if name not in self._components:
            other = Session(self.bundle, self.variant, self.backend.name, self._options.threads,
                            graph_optimization=self._options.graph_optimization, component=name)
            self._components[name] = other
        return self._components[name]

    @property
    def kind(self) -> ModelKind:
        """The bundle's model kind (edgetx.kinds), which knows its checks, gates and helpers."""
        return get_kind(self.model.get("kind"), self.bundle.path / MANIFEST)

    @property
    def tokenizer(self) -> Tokenizer:
        """The bundle's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for(self.bundle)
        return self._tokenizer

    @property
    def preprocessor(self) -> "ImagePreprocessor":
        """The bundle's image pre-processing (edgetx.runtimes.image.ImagePreprocessor), loaded on first use."""
        if self._preprocessor is None:
            from edgetx.runtimes.image import preprocessor_for

            self._preprocessor = preprocessor_for(self.bundle)
        return self._preprocessor

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings (len(texts), hidden) float32 of an encoder bundle, pooled as the model's
        sentence-transformers config asks (e.g. mean pooling + L2 normalisation)."""
        require_helper(self.kind, "embed", self.bundle.path)
        from edgetx.kinds.encoder import embed

        return embed(self, texts, batch_size)

    def classify(self, texts: list[str], batch_size: int = 32) -> list[dict]:
        """Per text of a sequence-classification bundle: {text, label, score, scores (every label's probability)}."""
        require_helper(self.kind, "classify", self.bundle.path)
        from edgetx.kinds.classifier import classify

        return classify(self, texts, batch_size)

    def tag(self, texts: list[str], batch_size: int = 32) -> list[list[dict]]:
        """Per text of a token-classification bundle, one {word, start, end, label, score, tokens} per word."""
        require_helper(self.kind, "tag", self.bundle.path)
        from edgetx.kinds.classifier import tag

        return tag(self, texts, batch_size)

    def translate(self, texts: list[str], max_new_tokens: int = 64, batch_size: int = 16) -> list[str]:
        """Per text of an encoder-decoder bundle (translation, summarisation, ...): its greedy output text."""
        require_helper(self.kind, "translate", self.bundle.path)
        from edgetx.kinds.seq2seq import translate

        return translate(self, texts, max_new_tokens, batch_size)

    def transcribe(self, audio, sample_rate: int | None = None, language: str | None = None, task: str | None = None,
                   max_new_tokens: int | None = None) -> dict:
        """Text of a speech-recognition bundle (Whisper) for an audio file (WAV, FLAC) or an array of samples:
        {text, language, task, seconds, segments: [{start, end, text}] per 30 s window}."""
        require_helper(self.kind, "transcribe", self.bundle.path)
        from edgetx.kinds.speech import transcribe

        return transcribe(self, audio, sample_rate, language, task, max_new_tokens)

    def classify_image(self, images: list, batch_size: int = 32) -> list[dict]:
        """Per image (a file path, an HxWx3 uint8 array or a PIL image) of an image-classification bundle:
        {label, score, scores (every label's probability)}; images are pre-processed torch-free as the bundle says."""
        require_helper(self.kind, "classify_image", self.bundle.path)
        from edgetx.kinds.vision import classify_image

        return classify_image(self, images, batch_size)

    def embed_image(self, images: list, batch_size: int = 32) -> np.ndarray:
        """Embeddings (len(images), dim) float32 of an image-encoder bundle (images as for classify_image)."""
        require_helper(self.kind, "embed_image", self.bundle.path)
        from edgetx.kinds.vision import embed_image

        return embed_image(self, images, batch_size)

    def embed_text(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Text embeddings (len(texts), dim) float32 of an image-text bundle (CLIP, SigLIP), in its images' space."""
        require_helper(self.kind, "embed_text", self.bundle.path)
        from edgetx.kinds.zero_shot import embed_text

        return embed_text(self, texts, batch_size)

    def zero_shot(self, images: list, labels: list[str], template: str | None = None, batch_size: int = 32) -> list[dict]:
        """Per image of an image-text bundle (CLIP, SigLIP): the best of `labels`, its probability, and every
        label's ({label, score, scores}); each label is written into `template` (default "This is a photo of {}.")."""
        require_helper(self.kind, "zero_shot", self.bundle.path)
        from edgetx.kinds.zero_shot import zero_shot

        return zero_shot(self, images, labels, template, batch_size)

    def bind_cache(self, capacity: int | None = None, batch: int = 1) -> CacheBinding | None:
        """A causal LM's KV cache kept bound to the backend between runs (no copy per step), or None where the
        backend passes caches as arrays. With `capacity` (positions to preallocate; it grows if a run needs more),
        a graph whose fused attention can write its presents in place gets one buffer per past input."""
        cache = cache_specs(self.inputs, batch)
        if not cache:
            return None
        if capacity is not None and self.backend.capabilities.graph_runs and not self._shares_cache_buffer():
            capacity = None
        return self._session.bind_cache(cache, capacity)

    @property
    def worker_pid(self) -> int | None:
        """The worker process the model runs in, for out-of-process backends; None when it runs in this one."""
        return self._session.pid

    def own_loop(self, prompt: np.ndarray, new_tokens: int) -> LoopTimings | None:
        """Greedy generation timed inside the backend's own loop, where it has one (genai); else None."""
        return self._session.own_loop(prompt, new_tokens)

    def _shares_cache_buffer(self) -> bool:
        """Whether this variant's graph reads each past only in a fused attention that writes the present in place."""
        if self._shared_buffer is None:
            self._shared_buffer = False
            if self.model_path.suffix == ".onnx":
                from edgetx.onnx_info import graph_skeleton

                self._shared_buffer = shares_cache_buffer(graph_skeleton(self.model_path))
        return self._shared_buffer

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Validate `feeds` against the manifest, run, and return the outputs by name."""
        result = self.run_timed(feeds, output_names)
        return result.outputs

    def run_timed(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> RunResult:
        """`run`, also returning the time the backend took."""
        if not self.backend.capabilities.graph_runs:  # a runtime that owns its loop says why it takes no single run
            return self._session.run(feeds, output_names)
        returned = self._returned
        unscanned = frozenset(id(v) for v in (feeds.values() if isinstance(feeds, dict) else ())
                              if returned.get(id(v)) is v)
        arrays = validate_inputs(feeds, self.inputs, self._limits, self._max_length, unscanned)
        if output_names is not None:
            known = {o["name"] for o in self.outputs}
            bad = [n for n in output_names if not isinstance(n, str) or n not in known]
            if bad or not isinstance(output_names, list):
                raise InputError(f"unknown output(s) {bad or output_names}; the model returns: {', '.join(sorted(known))}")
        result = self._session.run(arrays, output_names)
        for value in result.outputs.values():
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                returned[id(value)] = value
        self.last_run_seconds = result.seconds
        return result
