"""The backend interface: where a bundle's model runs.

A backend says whether it can run here (and why not), loads a model into a session, and
runs it on named numpy inputs, returning outputs and the time the run took. Backends
register themselves by name; the core looks them up and never special-cases one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetx.errors import BackendError


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""


@dataclass(frozen=True)
class SessionOptions:
    """Options every backend understands; a backend ignores what does not apply to it."""

    threads: int | None = None  # intra-op threads; None = the backend's default
    graph_optimization: str | None = None  # "disabled", "basic", "extended", "all"; None = default
    extra: dict[str, str] = field(default_factory=dict)  # backend-specific settings


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    seconds: float  # wall time of the run as the backend measured it


class BackendSession(ABC):
    """A model loaded on a backend."""

    @property
    @abstractmethod
    def output_names(self) -> list[str]: ...

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> RunResult: ...


class Backend(ABC):
    name: str = ""
    description: str = ""
    model_format: str = "onnx"  # which serialization of a variant it loads: "onnx", or "ort" (ORT mobile format)
    # Models above this many parameters run impractically slowly here (e.g. under emulation): a
    # whole-matrix run (`verify --all`) skips them and says so; naming the backend runs them anyway.
    max_parameters: int | None = None

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run on this machine now, and if not, why."""

    @abstractmethod
    def create_session(self, model_path: Path, options: SessionOptions) -> BackendSession: ...


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    if not backend.name:
        raise ValueError(f"{type(backend).__name__} needs a name")
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(sorted(_REGISTRY))}")
    backend = _REGISTRY[name]
    status = backend.availability()
    if not status.available:
        raise BackendError(f"backend {name!r} is not available here: {status.reason}")
    return backend


def list_backends() -> dict[str, Backend]:
    return dict(_REGISTRY)
