"""Install the "qnn" environment: a venv with onnxruntime + the onnxruntime-qnn plugin EP (Qualcomm's QNN
SDK libraries, including the Hexagon HTP simulator that runs on x86-64 Linux).

    edgetx provision qnn [--root DIR] [--force]     # or: make provision-qnn

Wheels are downloaded once into ROOT/cache/wheels; the venv is ROOT/env/venv; the stamp records the
versions and the plugin library's path, and is written only after the venv registered the plugin EP.
"""

from __future__ import annotations

from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes import install

QNN_VERSION = "2.7.0"  # onnxruntime-qnn; it brings the onnxruntime it was built for
CHECK = ("import json, numpy, onnxruntime as ort, onnxruntime_qnn as q; "
         "ort.register_execution_provider_library(q.EP_NAME if hasattr(q, 'EP_NAME') else 'QNNExecutionProvider', "
         "q.get_library_path()); "
         "print(json.dumps({'onnxruntime': ort.__version__, 'numpy': numpy.__version__, "
         "'library': q.get_library_path(), 'ep_name': 'QNNExecutionProvider', "
         "'devices': [d.ep_name for d in ort.get_ep_devices()]}))")


def _accept(seen: dict, work: Path) -> dict:
    if "QNNExecutionProvider" not in seen["devices"]:
        raise BackendError(f"the QNN plugin EP registered but offers no device: {seen}")
    return {**seen, "library": seen["library"].replace(str(work), "{env}")}  # as seen from ROOT/env, once renamed


def provision(root: Path, force: bool = False) -> dict:
    return install.provision_venv(root, force, "qnn", [f"onnxruntime-qnn=={QNN_VERSION}", "numpy"], CHECK,
                                  "the venv imports onnxruntime and registers the QNN plugin EP", _accept)
