"""onnxruntime's CPU execution provider, in process: the reference backend every bundle is verified on
(`ort-cpu`), and the same loading a variant's `.ort` file, the ORT mobile format (`ort-format`; `edgetx convert
BUNDLE --to ort` writes the files)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgetx.errors import BackendError
from edgetx.runtimes.backend import (REFERENCE_BACKEND, Availability, Backend, BackendSession, CacheBinding, CacheSpec,
                                     Capabilities, RunResult, SessionOptions, register_backend)
from edgetx.runtimes.worker.ort_options import session_options


class OrtSession(BackendSession):
    def __init__(self, session, model_path: Path):
        self._session = session
        self._model_path = model_path
        self._outputs = [o.name for o in session.get_outputs()]

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> RunResult:
        names = output_names or self._outputs
        start = time.perf_counter()
        try:
            values = self._session.run(names, feeds)
        except Exception as e:  # onnxruntime raises its own exception types; say where it came from
            raise BackendError(f"onnxruntime failed to run {self._model_path}: {e}") from e
        return RunResult(dict(zip(names, values)), time.perf_counter() - start)

    def bind_cache(self, cache: dict[str, CacheSpec], capacity: int | None = None) -> CacheBinding:
        from edgetx.runtimes.ort_cpu.binding import OrtCacheBinding

        return OrtCacheBinding(self._session, self._model_path, cache, capacity)


class OrtCpuBackend(Backend):
    name = REFERENCE_BACKEND
    description = "onnxruntime, CPU execution provider (this machine)"
    provider = "CPUExecutionProvider"

    def availability(self) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as e:
            return Availability(False, f"onnxruntime is not installed ({e}); pip install onnxruntime")
        if self.provider not in ort.get_available_providers():
            return Availability(False, f"this onnxruntime build has no {self.provider}")
        return Availability(True, f"onnxruntime {ort.__version__}")

    def create_session(self, model_path: Path, options: SessionOptions) -> OrtSession:
        import onnxruntime as ort

        try:
            so = session_options(ort, options.threads, options.graph_optimization, options.extra,
                                 memory_arena=options.memory_arena)
        except ValueError as e:
            raise BackendError(str(e)) from None
        try:
            session = ort.InferenceSession(str(model_path), so, providers=[self.provider])
        except Exception as e:
            raise BackendError(f"onnxruntime could not load {model_path}: {e}") from e
        return OrtSession(session, Path(model_path))


class OrtFormatBackend(OrtCpuBackend):
    name = "ort-format"
    description = "onnxruntime CPU EP loading the variant's .ort (mobile format) file"
    capabilities = Capabilities(model_format="ort")


register_backend(OrtCpuBackend())
register_backend(OrtFormatBackend())
