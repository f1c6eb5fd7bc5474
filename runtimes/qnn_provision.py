"""Provision the "qnn" backend: a venv with onnxruntime + the onnxruntime-qnn plugin EP (Qualcomm's
QNN SDK libraries, including the Hexagon HTP simulator that runs on x86-64 Linux).

    python -m edgetx.runtimes.qnn_provision [--root DIR] [--force]     # or: make provision-qnn

ROOT is $EDGETX_QNN_ROOT (default ~/.cache/edgetx/qnn). Wheels are downloaded once into
ROOT/cache/wheels; the venv is ROOT/env/venv; the stamp ROOT/env/provisioned.json records the
versions and the plugin library's path, and is written only after the venv imported them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgetx.runtimes import vendor_provision as vp

QNN_VERSION = "2.7.0"  # onnxruntime-qnn; it brings the onnxruntime it was built for
DEFAULT_ROOT = "~/.cache/edgetx/qnn"
VARIABLE = "EDGETX_QNN_ROOT"
CHECK = ("import json, numpy, onnxruntime as ort, onnxruntime_qnn as q; "
         "ort.register_execution_provider_library(q.EP_NAME if hasattr(q, 'EP_NAME') else 'QNNExecutionProvider', "
         "q.get_library_path()); "
         "print(json.dumps({'onnxruntime': ort.__version__, 'numpy': numpy.__version__, "
         "'library': q.get_library_path(), 'ep_name': 'QNNExecutionProvider', "
         "'devices': [d.ep_name for d in ort.get_ep_devices()]}))")


def _build(work: Path, cache: Path, step: vp.Steps) -> dict:
    pins = [f"onnxruntime-qnn=={QNN_VERSION}", "numpy"]
    wheels = vp.fetch_wheels(cache, pins, step)
    python = vp.make_venv(work, wheels, pins, step)
    step("checking: the venv imports onnxruntime and registers the QNN plugin EP")
    seen = vp.check_python([str(python)], CHECK, "registering the QNN plugin EP in the new venv")
    if "QNNExecutionProvider" not in seen["devices"]:
        raise vp.BackendError(f"the QNN plugin EP registered but offers no device: {seen}")
    # The library path as seen from the final location (the venv is renamed from work to env).
    seen["library"] = seen["library"].replace(str(work), "{env}")
    return {**seen, "python": "venv/bin/python"}


def provision(root: Path, force: bool = False, step: vp.Steps | None = None) -> dict:
    return vp.provision(root, {"onnxruntime-qnn": QNN_VERSION}, _build, step or vp.Steps("qnn"), force)


def main(argv: list[str] | None = None) -> int:
    return vp.main("qnn", __doc__.split("\n")[0], VARIABLE, DEFAULT_ROOT,
                   lambda root, force, step: provision(root, force, step), argv)


if __name__ == "__main__":
    sys.exit(main())
