"""Install the "openvino" environment: a venv with onnxruntime-openvino (Intel's build of onnxruntime with the
OpenVINO execution provider; it ships its own `onnxruntime` package, so it cannot share a venv with the
host's onnxruntime).

    edgetx provision openvino [--root DIR] [--force]     # or: make provision-openvino

Wheels are cached in ROOT/cache/wheels, the venv is ROOT/env/venv, and the stamp is written after the
venv ran.
"""

from __future__ import annotations

from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes import install

OPENVINO_ORT_VERSION = "1.24.1"  # onnxruntime-openvino on PyPI (OpenVINO 2025.4 inside)
CHECK = ("import json, numpy, onnxruntime as ort; "
         "print(json.dumps({'onnxruntime': ort.__version__, 'numpy': numpy.__version__, "
         "'providers': ort.get_available_providers(), 'device': ort.get_device()}))")


def _accept(seen: dict, work: Path) -> dict:
    if "OpenVINOExecutionProvider" not in seen["providers"]:
        raise BackendError(f"the installed onnxruntime has no OpenVINOExecutionProvider: {seen}")
    return seen


def provision(root: Path, force: bool = False) -> dict:
    return install.provision_venv(root, force, "openvino", [f"onnxruntime-openvino=={OPENVINO_ORT_VERSION}", "numpy"],
                                  CHECK, "the venv's onnxruntime offers OpenVINOExecutionProvider", _accept)
