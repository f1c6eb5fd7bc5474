"""The "web" backend: onnxruntime-web (wasm), the runtime a browser uses, driven in Node.js.

The model runs in `node runtimes/web/worker.mjs`, which speaks the `wire` format over stdin/stdout.
onnxruntime-web comes from the folder `python -m edgetx.runtimes.web_provision` fills
(`$EDGETX_WEB_ROOT`, default `~/.cache/edgetx/web`); Node is `$EDGETX_NODE` or `node` on PATH.
ESM ignores NODE_PATH, so the worker is told the folder in `EDGETX_WEB_ROOT` and imports the
package from there by absolute path.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes.base import Availability, Backend, SessionOptions, register_backend
from edgetx.runtimes.remote import WorkerSession

ORT_WEB_VERSION = "1.30.0"  # the onnxruntime-web the JS runtime is tested with (web_provision installs it)
AJV_VERSION = "8.20.0"  # the JSON Schema validator the JS runtime checks manifests with
NPM_PACKAGES = {"onnxruntime-web": ORT_WEB_VERSION, "ajv": AJV_VERSION}
WEB_DIR = Path(__file__).resolve().parent / "web"
WORKER = WEB_DIR / "worker.mjs"
GENERATE = WEB_DIR / "generate.mjs"
MIN_NODE = 18
PROVISION_HINT = "run `python -m edgetx.runtimes.web_provision`"  # also the hint when Node is missing


def node_executable() -> str | None:
    """Node.js to use: `$EDGETX_NODE` if set, else `node` on PATH."""
    configured = os.environ.get("EDGETX_NODE")
    return configured if configured else shutil.which("node")


@functools.lru_cache(maxsize=8)
def node_version(node: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a Node.js executable, or None if it does not run as one."""
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)\S*", out.strip())
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]


def worker_env(root: Path) -> dict[str, str]:
    """The environment the Node processes run with: the provisioned folder passed explicitly."""
    return {**os.environ, "EDGETX_WEB_ROOT": str(Path(root).expanduser().absolute())}


def _root() -> Path:
    from edgetx.runtimes.web_provision import default_root

    return default_root()


class WebBackend(Backend):
    name = "web"
    description = f"onnxruntime-web {ORT_WEB_VERSION} (wasm) in Node.js, the runtime browsers use"

    def availability(self) -> Availability:
        node = node_executable()
        if node is None:
            return Availability(False, f"Node.js >= {MIN_NODE} is not on PATH: install it (e.g. apt-get install nodejs "
                                       f"npm) or set EDGETX_NODE to its path, then {PROVISION_HINT}")
        version = node_version(node)
        if version is None:
            return Availability(False, f"{node} does not run as Node.js (`{node} --version` failed); "
                                       f"set EDGETX_NODE to a Node.js >= {MIN_NODE}")
        if version[0] < MIN_NODE:
            return Availability(False, f"{node} is Node.js {'.'.join(map(str, version))}; onnxruntime-web needs "
                                       f">= {MIN_NODE}: install a newer one or set EDGETX_NODE to it")
        if not WORKER.is_file():
            return Availability(False, f"{WORKER} is missing: this edgetx install lacks its web runtime files; "
                                       "reinstall edgetx")
        from edgetx.runtimes.web_provision import default_root, installed_version, is_provisioned  # not at import:
        # `python -m edgetx.runtimes.web_provision` must not find itself imported already
        root = default_root()
        if not is_provisioned(root):
            found = installed_version(root)
            state = f"it holds onnxruntime-web {found}" if found else "nothing is installed there"
            configured = "EDGETX_WEB_ROOT" in os.environ
            command = f"python -m edgetx.runtimes.web_provision{f' --root {root}' if configured else ''}"
            return Availability(False, f"onnxruntime-web {ORT_WEB_VERSION} is not provisioned in {root}"
                                       f"{' (EDGETX_WEB_ROOT)' if configured else ''}: {state}; run `{command}`")
        return Availability(True, f"onnxruntime-web {ORT_WEB_VERSION} (wasm) on Node.js "
                                  f"{'.'.join(map(str, version))}, from {root}")

    def create_session(self, model_path: Path, options: SessionOptions) -> WorkerSession:
        status = self.availability()
        if not status.available:
            raise BackendError(f"backend 'web' is not available here: {status.reason}")
        return WorkerSession([node_executable(), str(WORKER)], Path(model_path), options,
                             label="web (onnxruntime-web wasm)", env=worker_env(_root()))


class WebOrtBackend(WebBackend):
    """onnxruntime-web loading the variant's .ort (mobile format) file."""

    name = "web-ort"
    description = f"onnxruntime-web {ORT_WEB_VERSION} (wasm) in Node.js, loading the variant's .ort file"
    model_format = "ort"


BACKEND = register_backend(WebBackend())
register_backend(WebOrtBackend())
