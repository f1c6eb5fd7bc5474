"""Backends whose model runs in another process (an emulated ARM64 Python, Node + wasm).

`WorkerSession` starts a worker that speaks the `wire` format, asks it to load the model, and
forwards each run. The worker's stderr is kept so that its failure is reported in its own words.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import weakref
from pathlib import Path

import numpy as np

from edgetx.errors import BackendError
from edgetx.runtimes.backend import BackendSession, RunResult, SessionOptions
from edgetx.runtimes.worker import wire

WORKER = Path(__file__).resolve().parent / "worker" / "ort_worker.py"  # the stand-alone onnxruntime worker


def worker_environment(**extra: str) -> dict[str, str]:
    """A small, explicit environment for a worker (nothing from the host's Python leaks in)."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "LC_ALL": "C.UTF-8",
            "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            process.stdin.close()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()


class WorkerSession(BackendSession):
    """A model loaded in a worker process started with `argv` (and `env`)."""

    def __init__(self, argv: list[str], model_path: Path, options: SessionOptions, label: str,
                 env: dict[str, str] | None = None, load_fields: dict | None = None):
        self.label = label
        self._model_path = Path(model_path)
        self._stderr = tempfile.TemporaryFile()
        try:
            self._process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=self._stderr, env=env)
        except OSError as e:
            raise BackendError(f"{label}: could not start its worker ({argv[0]}): {e}") from e
        self._finalizer = weakref.finalize(self, _stop, self._process)
        # load_fields: optional worker fields (ort_worker.py: "providers", "plugin_ep", "placement").
        reply, _ = self._request({"op": "load", "model": str(self._model_path.resolve()), "threads": options.threads,
                                  "graph_optimization": options.graph_optimization, "extra": options.extra,
                                  **(load_fields or {})})
        self._outputs: list[str] = reply["outputs"]
        self.runtime: str = reply.get("runtime", "")
        self.providers: list[str] = reply.get("providers", [])
        self._placement: dict | None = reply.get("placement")  # where each node runs, when asked for

    def _request(self, header: dict, arrays: dict[str, np.ndarray] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        try:
            wire.write_message(self._process.stdin, header, arrays)
            reply, outputs = wire.read_message(self._process.stdout)
        except (EOFError, OSError) as e:
            raise BackendError(f"{self.label}: the worker stopped ({e}){self._stderr_tail()}") from e
        if not reply.get("ok"):
            raise BackendError(f"{self.label} failed on {self._model_path}: {reply.get('error')}")
        return reply, outputs

    def _stderr_tail(self, lines: int = 8) -> str:
        self._process.poll()
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip().splitlines()[-lines:]
        return (":\n  " + "\n  ".join(text)) if text else ""

    @property
    def placement(self) -> dict | None:
        return self._placement

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> RunResult:
        reply, outputs = self._request({"op": "run", "outputs": output_names}, feeds)
        names = output_names or self._outputs
        return RunResult({name: outputs[name] for name in names}, float(reply["seconds"]))

    def close(self) -> None:
        """Stop the worker (also done when the session is garbage-collected)."""
        if self._process.poll() is None:
            try:
                self._request({"op": "close"})
            except BackendError:
                pass
        self._finalizer()
