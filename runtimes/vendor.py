"""What the vendor backends (qnn, openvino, xnnpack) share: a provisioned environment under a root
folder, a worker process (`ort_worker.py`) running the vendor's onnxruntime, and node placement.

Each vendor library runs out of process, so a crash inside it becomes a BackendError that quotes
the worker's last words, not a dead test run. Every session also reports where its nodes run
(`WorkerSession.placement`, see ort_worker.py) unless SessionOptions.extra["edgetx.placement"]
is "0"; `summarize_placement` turns that into counts per op type.
"""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes.base import Availability, Backend, SessionOptions
from edgetx.runtimes.remote import WorkerSession
from edgetx.runtimes.vendor_provision import STAMP, WORKER_DIR, root_from_env

WORKER = WORKER_DIR / "ort_worker.py"
PLACEMENT_OPTION = "edgetx.placement"  # SessionOptions.extra: "0" = do not measure placement
CPU_EP = "CPUExecutionProvider"


class VendorBackend(Backend):
    """A backend whose onnxruntime lives in ROOT/env, provisioned by `python -m edgetx.runtimes.NAME_provision`."""

    root_variable = ""  # e.g. EDGETX_QNN_ROOT
    default_root = ""  # e.g. ~/.cache/edgetx/qnn
    provision_module = ""  # e.g. qnn_provision
    make_target = ""  # e.g. provision-qnn
    provider = ""  # the execution provider this backend is about, e.g. QNNExecutionProvider
    option_prefix = ""  # SessionOptions.extra keys with this prefix configure the backend, not onnxruntime
    reports_placement = True  # its sessions carry `placement` (edgetx preflight needs it)

    def root(self) -> Path:
        return root_from_env(self.root_variable, self.default_root)

    def provision_hint(self, where: Path) -> str:
        custom = "" if where == Path(self.default_root).expanduser().absolute() else f" --root {where}"
        return f"run `python -m edgetx.runtimes.{self.provision_module}{custom}` (or `make {self.make_target}`)"

    def host_problem(self) -> str | None:
        """Why this host cannot run the stack at all, or None."""
        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            return f"{self.name} is provisioned for x86-64 Linux; this host is {platform.system()} {platform.machine()}"
        return None

    def environment(self) -> tuple[Path, dict]:
        """(ROOT/env, its stamp), or raise BackendError saying what is missing and how to fix it."""
        problem = self.host_problem()
        if problem:
            raise BackendError(problem)
        where = self.root()
        env = where / "env"
        try:
            stamp = json.loads((env / STAMP).read_text())
        except FileNotFoundError:
            raise BackendError(f"not provisioned at {where}: {self.provision_hint(where)}") from None
        except (OSError, ValueError) as e:
            raise BackendError(f"{env / STAMP} is unreadable ({e}): {self.provision_hint(where)} --force") from None
        for needed in self.required_files(env, stamp):
            if not needed.exists():
                raise BackendError(f"{needed} is missing: {self.provision_hint(where)} --force")
        if not WORKER.is_file():
            raise BackendError(f"the worker script {WORKER} is missing from this edgetx install; reinstall edgetx")
        return env, stamp

    def availability(self) -> Availability:
        try:
            env, stamp = self.environment()
        except BackendError as e:
            return Availability(False, str(e))
        return Availability(True, f"{self.describe(stamp)}; {env}")

    # --- what each vendor backend defines ------------------------------------------------------

    def required_files(self, env: Path, stamp: dict) -> list[Path]:
        return []

    def describe(self, stamp: dict) -> str:
        return f"onnxruntime {stamp.get('onnxruntime', '?')}"

    def worker_command(self, env: Path, stamp: dict) -> tuple[list[str], dict[str, str]]:
        """(argv that runs ort_worker.py, its environment)."""
        raise NotImplementedError

    def load_fields(self, env: Path, stamp: dict, options: SessionOptions) -> dict:
        """The worker's provider fields ("providers" or "plugin_ep") for a session with `options`."""
        raise NotImplementedError

    # --- sessions ------------------------------------------------------------------------------

    def create_session(self, model_path: Path, options: SessionOptions) -> WorkerSession:
        env, stamp = self.environment()
        model_path = Path(model_path)
        if not model_path.is_file():
            raise BackendError(f"{self.name}: model file {model_path} does not exist")
        argv, worker_env = self.worker_command(env, stamp)
        fields = self.load_fields(env, stamp, options)
        fields["placement"] = options.extra.get(PLACEMENT_OPTION, "1") != "0"
        forwarded = {k: v for k, v in options.extra.items()
                     if k != PLACEMENT_OPTION and not (self.option_prefix and k.startswith(self.option_prefix))}
        worker_options = SessionOptions(options.threads, options.graph_optimization, forwarded)
        return WorkerSession(argv, model_path, worker_options, label=f"{self.name} ({model_path.name})",
                             env=worker_env, load_fields=fields)


def base_env(**extra: str) -> dict[str, str]:
    """A small, explicit environment for a worker (nothing from the host's Python leaks in)."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "LC_ALL": "C.UTF-8",
            "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def summarize_placement(placement: dict | None, provider: str) -> dict | None:
    """Counts from a worker's placement: nodes on `provider` vs elsewhere, per op type, partitions."""
    if not placement:
        return None
    nodes = placement["nodes"]
    on = [op for op, _, ep in nodes if ep == provider]
    off = [(op, ep) for op, _, ep in nodes if ep != provider]
    by_op: dict[str, dict[str, int]] = {}
    for op, _, ep in nodes:
        entry = by_op.setdefault(op, {"total": 0, "on_backend": 0})
        entry["total"] += 1
        entry["on_backend"] += ep == provider
    return {"provider": provider, "nodes": len(nodes), "on_backend": len(on),
            "partitions": placement.get("partitions", 0), "compiled": placement.get("compiled", {}),
            "fallback": dict(Counter(op for op, _ in off).most_common()),
            "fallback_providers": dict(Counter(ep for _, ep in off)),
            "by_op": by_op, "level": placement.get("level"), "messages": placement.get("messages", [])}


def placement_text(summary: dict | None) -> str:
    """One line: '376/376 nodes on QNNExecutionProvider, 1 partition' (+ what fell back)."""
    if not summary:
        return ""
    short = summary["provider"].removesuffix("ExecutionProvider")
    text = (f"{summary['on_backend']}/{summary['nodes']} nodes on {short}, {summary['partitions']} "
            f"partition{'s' if summary['partitions'] != 1 else ''}")
    if summary["fallback"]:
        top = ", ".join(f"{op} x{n}" for op, n in list(summary["fallback"].items())[:4])
        text += f"; on CPU: {top}{', ...' if len(summary['fallback']) > 4 else ''}"
    return text
