"""Where a bundle runs: backends behind one interface, and the embedding API for apps.

Torch-free: importing this needs onnxruntime and numpy only.
"""

from edgetx.runtimes import arm64, ort_cpu, ort_format, web_backend  # noqa: F401  (register the backends)
from edgetx.runtimes import openvino, qnn, xnnpack  # noqa: F401  (vendor backends, each optional)
from edgetx.runtimes.base import Availability, Backend, BackendSession, RunResult, SessionOptions, get_backend, list_backends, register_backend
from edgetx.runtimes.generate import GenerationConfig, Generator
from edgetx.runtimes.session import Session

__all__ = [
    "Availability", "Backend", "BackendSession", "GenerationConfig", "Generator", "RunResult",
    "Session", "SessionOptions", "get_backend", "list_backends", "register_backend",
]
