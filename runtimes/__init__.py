"""Where a bundle runs: backends behind one interface (backend.py, one folder per backend), and the
embedding API for apps (Session, Generator, ChatSession), and the audio front end of speech models (audio.py).

Torch-free: it needs onnxruntime and numpy only. Importing this package is light: the names below load
their modules on first use, and the backends register when the registry is first asked.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Availability": "backend", "Backend": "backend", "BackendSession": "backend", "Capabilities": "backend",
    "FIXED_FORMAT": "backend", "REFERENCE_BACKEND": "backend", "RunResult": "backend", "SessionOptions": "backend",
    "get_backend": "backend", "list_backends": "backend", "register_backend": "backend",
    "ChatSession": "chat", "GenerationConfig": "generate", "Generator": "generate", "Session": "session",
    "log_mel_spectrogram": "audio", "mel_filter_bank": "audio", "read_audio": "audio", "resample": "audio",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgetx.runtimes' has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgetx.runtimes.{_EXPORTS[name]}"), name)
