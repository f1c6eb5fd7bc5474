"""The "web" backend: onnxruntime-web (wasm), the runtime a browser uses, driven in Node.js.

The model runs in `node runtimes/web/worker.mjs`, which speaks the `wire` format over stdin/stdout.
onnxruntime-web (and ajv, which checks manifests in the JS runtime) come from the environment its
installer (provision.py, `edgetx provision web`) fills: ROOT/env/node_modules (edgetx.runtimes.environment);
Node is `$EDGETX_NODE` or `node` on PATH. ESM ignores NODE_PATH, so the Node processes are told the folder
in `EDGETX_WEB_PACKAGES` and import the packages from there by absolute path.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes.backend import Availability, Capabilities, SessionOptions, register_backend
from edgetx.runtimes.environment import ProvisionedBackend, environment_root
from edgetx.runtimes.remote import WorkerSession

ORT_WEB_VERSION = "1.30.0"  # the onnxruntime-web the JS runtime is tested with
AJV_VERSION = "8.20.0"  # the JSON Schema validator the JS runtime checks manifests with
NPM_PACKAGES = {"onnxruntime-web": ORT_WEB_VERSION, "ajv": AJV_VERSION}
WEB_DIR = Path(__file__).resolve().parent
WORKER = WEB_DIR / "worker.mjs"
GENERATE = WEB_DIR / "generate.mjs"
MIN_NODE = 18
PACKAGES_VARIABLE = "EDGETX_WEB_PACKAGES"  # tells the Node processes where node_modules is


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


def worker_env(root: Path | None = None) -> dict[str, str]:
    """The environment the Node processes run with: the provisioned packages' folder passed explicitly."""
    root = Path(root) if root is not None else environment_root("web")
    return {**os.environ, PACKAGES_VARIABLE: str((root / "env").expanduser().absolute())}


class WebBackend(ProvisionedBackend):
    name = "web"
    description = f"onnxruntime-web {ORT_WEB_VERSION} (wasm) in Node.js, the runtime browsers use"
    environment = "web"
    installer = "edgetx.runtimes.web.provision"

    def host_problem(self) -> str | None:
        node = node_executable()
        if node is None:
            return (f"Node.js >= {MIN_NODE} is not on PATH: install it (e.g. apt-get install nodejs npm) or set "
                    f"EDGETX_NODE to its path, then run `edgetx provision web`")
        version = node_version(node)
        if version is None:
            return f"{node} does not run as Node.js (`{node} --version` failed); set EDGETX_NODE to a Node.js >= {MIN_NODE}"
        if version[0] < MIN_NODE:
            return (f"{node} is Node.js {'.'.join(map(str, version))}; onnxruntime-web needs >= {MIN_NODE}: "
                    "install a newer one or set EDGETX_NODE to it")
        if not WORKER.is_file():
            return f"{WORKER} is missing: this edgetx install lacks its web runtime files; reinstall edgetx"
        return None

    def required_files(self, env: Path, stamp: dict) -> list[Path]:
        return [env / "node_modules" / name / "package.json" for name in NPM_PACKAGES]

    def describe(self, stamp: dict) -> str:
        return f"onnxruntime-web {stamp.get('onnxruntime-web', '?')} (wasm) on Node.js {stamp.get('node', '?')}"

    def availability(self) -> Availability:
        status = super().availability()
        if status.available:
            _, stamp = self.environment_dir()
            stale = {k: stamp.get(k) for k, v in NPM_PACKAGES.items() if stamp.get(k) != v}
            if stale:  # provisioned by another edgetx version
                return Availability(False, f"{self.root()} holds {stale}, this edgetx needs {NPM_PACKAGES}: run "
                                           "`edgetx provision web --force` (or `make provision-web`)")
        return status

    def create_session(self, model_path: Path, options: SessionOptions) -> WorkerSession:
        status = self.availability()
        if not status.available:
            raise BackendError(f"backend {self.name!r} is not available here: {status.reason}")
        return WorkerSession([node_executable(), str(WORKER)], Path(model_path), options,
                             label="web (onnxruntime-web wasm)", env=worker_env(self.root()))


class WebOrtBackend(WebBackend):
    """onnxruntime-web loading the variant's .ort (mobile format) file."""

    name = "web-ort"
    description = f"onnxruntime-web {ORT_WEB_VERSION} (wasm) in Node.js, loading the variant's .ort file"
    capabilities = Capabilities(model_format="ort")


register_backend(WebBackend())
register_backend(WebOrtBackend())
