"""`Session`: run one variant of a bundle on a backend, with inputs checked first.

Inputs are validated against the manifest's I/O signature (names, dtypes, ranks, fixed and
symbolic dims) so that a mistake is reported in edgetx's words, before onnxruntime sees it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgetx.bundle import Bundle
from edgetx.errors import InputError
from edgetx.runtimes.base import RunResult, SessionOptions, get_backend
from edgetx.runtimes.pooling import pool
from edgetx.runtimes.tokenizer import Tokenizer, tokenizer_for


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


def validate_inputs(feeds: dict[str, object], inputs: list[dict]) -> dict[str, np.ndarray]:
    """Check feeds against an I/O signature; return them as numpy arrays or raise InputError."""
    expected = {spec["name"]: spec for spec in inputs}
    unknown = sorted(set(feeds) - set(expected))
    missing = [name for name in expected if name not in feeds]
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
    return arrays


class Session:
    """One variant of a bundle, loaded on a backend.

        session = Session("dist/edgetx-gpt")               # fp32 on onnxruntime CPU
        outputs = session.run({"input_ids": ids, ...})     # dict of numpy arrays
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, variant: str = "fp32", backend: str = "ort-cpu",
                 threads: int | None = None, verify_hashes: bool = True, graph_optimization: str | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle, verify_hashes=verify_hashes)
        self.variant = self.bundle.variant(variant)
        self.backend = get_backend(backend)
        self.model_path: Path = self.bundle.file(self.variant.file_for(self.backend.model_format))
        options = SessionOptions(threads=threads, graph_optimization=graph_optimization)
        self._session = self.backend.create_session(self.model_path, options)
        self.inputs: list[dict] = self.bundle.io["inputs"]
        self.outputs: list[dict] = self.bundle.io["outputs"]
        self.last_run_seconds: float | None = None
        self._tokenizer: Tokenizer | None = None

    @property
    def model(self) -> dict:
        return self.bundle.model

    @property
    def tokenizer(self) -> Tokenizer:
        """The bundle's tokenizer, loaded on first use."""
        if self._tokenizer is None:
            self._tokenizer = tokenizer_for(self.bundle)
        return self._tokenizer

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Sentence embeddings (len(texts), hidden) float32 for an encoder bundle, pooled as the
        model's sentence-transformers config asks (e.g. mean pooling + L2 normalisation)."""
        if self.model.get("kind") != "encoder":
            raise InputError(f"{self.bundle.path} holds a {self.model.get('kind')!r} model; embed needs an encoder")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("embed takes a list of strings")
        names = [spec["name"] for spec in self.inputs]
        chunks = []
        for start in range(0, len(texts), batch_size):
            chunks.append(self._embed_batch(texts[start : start + batch_size], names))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.model["hidden_size"]), np.float32)

    def _embed_batch(self, texts: list[str], names: list[str]) -> np.ndarray:
        ids, type_ids = self.tokenizer.encode_batch(texts, self.model["max_positions"])
        width = max(len(i) for i in ids)
        batch = {"input_ids": np.full((len(ids), width), self.tokenizer.pad_token_id, np.int64),
                 "attention_mask": np.zeros((len(ids), width), np.int64),
                 "token_type_ids": np.zeros((len(ids), width), np.int64)}
        for row, (tokens, types) in enumerate(zip(ids, type_ids)):
            batch["input_ids"][row, : len(tokens)] = tokens
            batch["attention_mask"][row, : len(tokens)] = 1
            batch["token_type_ids"][row, : len(types)] = types
        hidden = self.run({n: batch[n] for n in names}, ["last_hidden_state"])["last_hidden_state"]
        return pool(hidden, batch["attention_mask"], self.model.get("pooling", {}))

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Validate `feeds` against the manifest, run, and return the outputs by name."""
        result = self.run_timed(feeds, output_names)
        return result.outputs

    def run_timed(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> RunResult:
        arrays = validate_inputs(feeds, self.inputs)
        if output_names is not None:
            known = {o["name"] for o in self.outputs}
            bad = [n for n in output_names if n not in known]
            if bad:
                raise InputError(f"unknown output(s) {', '.join(bad)}; the model returns: {', '.join(sorted(known))}")
        result = self._session.run(arrays, output_names)
        self.last_run_seconds = result.seconds
        return result
