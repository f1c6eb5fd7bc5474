"""Install the "genai" environment: a venv with onnxruntime-genai from PyPI and the host's onnxruntime version (genai's
model runs on onnxruntime; the same version on both sides keeps the kernels the same).

    edgetx provision genai [--root DIR] [--force]     # or: make provision-genai

Wheels are cached in ROOT/cache/wheels, the venv is ROOT/env/venv, and the stamp is written after the venv ran.
"""

from __future__ import annotations

from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes import install
from edgetx.runtimes.arm64.provision import host_version

GENAI_VERSION = "0.18.0"
CHECK = ("import json, numpy, onnxruntime, onnxruntime_genai as og; "
         "print(json.dumps({'onnxruntime-genai': og.__version__, 'onnxruntime': onnxruntime.__version__, "
         "'numpy': numpy.__version__}))")


def _accept(seen: dict, work: Path) -> dict:
    if seen.get("onnxruntime-genai") != GENAI_VERSION:
        raise BackendError(f"the venv reports onnxruntime-genai {seen.get('onnxruntime-genai')}, expected {GENAI_VERSION}")
    return seen


def provision(root: Path, force: bool = False) -> dict:
    pins = [f"onnxruntime-genai=={GENAI_VERSION}", f"onnxruntime=={host_version('onnxruntime')}", "numpy"]
    return install.provision_venv(root, force, "genai", pins, CHECK, "onnxruntime-genai imports in the venv", _accept)
