"""The backend interface: where a bundle's model runs.

A backend declares what it is (`Capabilities`: which file of a variant it loads, the precision it really
computes floats in, whether its sessions report where nodes ran), says whether it can run here (and why
not), loads a model into a session, and runs it on named numpy inputs, returning outputs and the time the
run took. Installing what a backend needs is a separate step (`installer`, run by `edgetx provision`).
Backends register themselves by name; the core looks them up and never special-cases one.

Built-in backends are imported on first lookup; other packages add theirs through the entry-point group
"edgetx.backends" (an entry point names a module that calls `register_backend` when imported) or by calling
`register_backend` themselves.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from edgetx.errors import BackendError

REFERENCE_BACKEND = "ort-cpu"  # where every bundle is verified at build time, and what others are compared with
FIXED_FORMAT = "onnx-fixed"  # a variant's fixed-shape copy (`edgetx convert --to fixed`)
_BUILTIN = ("edgetx.runtimes.ort_cpu", "edgetx.runtimes.arm64", "edgetx.runtimes.web", "edgetx.runtimes.qnn",
            "edgetx.runtimes.openvino", "edgetx.runtimes.xnnpack", "edgetx.runtimes.genai")
ENTRY_POINTS = "edgetx.backends"


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What a backend is, declared once; parity, pre-flight and `verify --all` read it."""

    model_format: str = "onnx"  # which file of a variant it loads: "onnx", "ort", FIXED_FORMAT
    float_precision: str = "fp32"  # the precision it computes float graphs in ("fp16" on QNN's HTP)
    reports_placement: bool = False  # its sessions say where each node ran (BackendSession.placement)
    provider: str = ""  # the onnxruntime execution provider that placement is about
    max_parameters: int | None = None  # above this, a whole-matrix run skips it (emulation is slow)
    # False: a runtime that owns its generation loop (onnxruntime-genai) runs token sequences through the KV cache
    # it keeps (BackendSession.bind_cache) and times whole generations (own_loop), never one graph run with the
    # cache passed in: checks that need single graph runs stay with the backends that make them
    graph_runs: bool = True
    kinds: tuple[str, ...] | None = None  # the model kinds it runs (None: every kind)

    @property
    def fixed_shapes(self) -> bool:
        """It takes fixed-shape files only (NPUs, XNNPACK)."""
        return self.model_format == FIXED_FORMAT


@dataclass(frozen=True)
class SessionOptions:
    """Options every backend understands; a backend ignores what does not apply to it."""

    threads: int | None = None  # intra-op threads; None = the backend's default
    graph_optimization: str | None = None  # "disabled", "basic", "extended", "all"; None = default
    # keep freed activation memory for the next run (fast repeated runs); off for one-off runs of big batches,
    # whose peak it would otherwise hold for the session's life
    memory_arena: bool = True
    extra: dict[str, str] = field(default_factory=dict)  # backend-specific settings


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    seconds: float  # wall time of the run as the backend measured it


@dataclass(frozen=True)
class CacheSpec:
    """One past input of a causal LM's graph: the present output that becomes it, its shape with no positions yet
    ([batch, heads, 0, head_dim]) and its dtype."""

    present: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class LoopTimings:
    """A generation timed inside a backend's own loop: the tokens it picked, the prompt's seconds (to the first
    token) and each later step's."""

    tokens: list[int]
    first_seconds: float
    step_seconds: list[float]


class CacheBinding(ABC):
    """A causal LM's KV cache kept on the backend from run to run: a run feeds the new positions' inputs only, and
    the presents it makes stay bound as the next run's past, never copied out through numpy (in one buffer the graph
    writes in place, when the binding has a capacity)."""

    past: int = 0  # positions the cache holds

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> RunResult:
        """Run `feeds` (every input but the cache) on top of the cache, which then holds their positions too."""

    @abstractmethod
    def truncate(self, length: int) -> None:
        """Keep the first `length` positions of the cache (a rejected draft, a chat turn rendered otherwise)."""


class BackendSession(ABC):
    """A model loaded on a backend."""

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> RunResult: ...

    @property
    def placement(self) -> dict | None:
        """Where each node runs ({"nodes": [[op, name, provider], ...], "partitions", "messages", ...}),
        for backends whose capabilities say they report it; else None."""
        return None

    def bind_cache(self, cache: dict[str, "CacheSpec"], capacity: int | None = None) -> "CacheBinding | None":
        """A KV cache kept on the backend between runs (`CacheBinding`), for backends that can hold one; None (the
        default) means the caller passes the cache in and out as numpy arrays. `cache` maps each past input to its
        present output and empty shape; with `capacity`, the graph writes each present into its past's buffer
        (preallocated for `capacity` positions) in place."""
        return None

    @property
    def pid(self) -> int | None:
        """The process the model runs in when it is not this one (a worker), so its memory can be measured."""
        return None

    def own_loop(self, prompt: np.ndarray, new_tokens: int) -> "LoopTimings | None":
        """Greedy generation of `new_tokens` after `prompt` (token ids) in the backend's own loop, timed inside it, for
        runtimes that own their generation loop; None (the default): the caller drives the loop step by step."""
        return None

    def close(self) -> None:
        """Release what the session holds (a worker process, ...); also done when it is garbage-collected."""


class Backend(ABC):
    name: str = ""
    description: str = ""
    capabilities: Capabilities = Capabilities()
    installer: str | None = None  # module that installs what it needs (`edgetx provision`); None = nothing to install
    environment: str = ""  # the provisioned environment it runs in (backends can share one: arm64, arm64-ort)

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run on this machine now, and if not, why."""

    @abstractmethod
    def create_session(self, model_path: Path, options: SessionOptions) -> BackendSession: ...


_REGISTRY: dict[str, Backend] = {}
_loaded = False


def register_backend(backend: Backend) -> Backend:
    if not backend.name:
        raise ValueError(f"{type(backend).__name__} needs a name")
    _REGISTRY[backend.name] = backend
    return backend


def _load_plugins() -> None:
    """Import the built-in backend modules and the "edgetx.backends" entry points, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN:
        importlib.import_module(module)
    for entry in metadata.entry_points(group=ENTRY_POINTS):
        try:
            loaded = entry.load()
        except Exception as e:  # a broken third-party plugin must not take the built-in backends down
            raise BackendError(f"backend plugin {entry.name!r} ({entry.value}) failed to load: {e}") from e
        if isinstance(loaded, Backend):
            register_backend(loaded)
        elif isinstance(loaded, type) and issubclass(loaded, Backend):
            register_backend(loaded())


def get_backend(name: str) -> Backend:
    _load_plugins()
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(sorted(_REGISTRY))}")
    backend = _REGISTRY[name]
    status = backend.availability()
    if not status.available:
        raise BackendError(f"backend {name!r} is not available here: {status.reason}")
    return backend


def list_backends() -> dict[str, Backend]:
    _load_plugins()
    return dict(_REGISTRY)
