"""Provision the "openvino" backend: a venv with onnxruntime-openvino (Intel's build of onnxruntime
with the OpenVINO execution provider; it ships its own `onnxruntime` package, so it cannot share
a venv with the host's onnxruntime).

    python -m edgetx.runtimes.openvino_provision [--root DIR] [--force]     # or: make provision-openvino

ROOT is $EDGETX_OPENVINO_ROOT (default ~/.cache/edgetx/openvino); wheels are cached in
ROOT/cache/wheels, the venv is ROOT/env/venv, and the stamp is written after the venv ran.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgetx.runtimes import vendor_provision as vp

OPENVINO_ORT_VERSION = "1.24.1"  # onnxruntime-openvino on PyPI (OpenVINO 2025.4 inside)
DEFAULT_ROOT = "~/.cache/edgetx/openvino"
VARIABLE = "EDGETX_OPENVINO_ROOT"
CHECK = ("import json, numpy, onnxruntime as ort; "
         "print(json.dumps({'onnxruntime': ort.__version__, 'numpy': numpy.__version__, "
         "'providers': ort.get_available_providers(), 'device': ort.get_device()}))")


def _build(work: Path, cache: Path, step: vp.Steps) -> dict:
    pins = [f"onnxruntime-openvino=={OPENVINO_ORT_VERSION}", "numpy"]
    wheels = vp.fetch_wheels(cache, pins, step)
    python = vp.make_venv(work, wheels, pins, step)
    step("checking: the venv's onnxruntime offers OpenVINOExecutionProvider")
    seen = vp.check_python([str(python)], CHECK, "importing onnxruntime (OpenVINO build) in the new venv")
    if "OpenVINOExecutionProvider" not in seen["providers"]:
        raise vp.BackendError(f"the installed onnxruntime has no OpenVINOExecutionProvider: {seen}")
    return {**seen, "python": "venv/bin/python"}


def provision(root: Path, force: bool = False, step: vp.Steps | None = None) -> dict:
    return vp.provision(root, {"onnxruntime-openvino": OPENVINO_ORT_VERSION}, _build, step or vp.Steps("openvino"),
                        force)


def main(argv: list[str] | None = None) -> int:
    return vp.main("openvino", __doc__.split("\n")[0], VARIABLE, DEFAULT_ROOT,
                   lambda root, force, step: provision(root, force, step), argv)


if __name__ == "__main__":
    sys.exit(main())
