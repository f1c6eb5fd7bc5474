"""What the vendor backends (qnn, openvino, xnnpack) share: a provisioned environment (edgetx.runtimes.
environment), a worker process (worker/ort_worker.py) running the vendor's onnxruntime, and node placement.

Each vendor library runs out of process, so a crash inside it becomes a BackendError that quotes
the worker's last words, not a dead test run. Every session also reports where its nodes run
(`WorkerSession.placement`, see ort_worker.py) unless SessionOptions.extra["edgetx.placement"]
is "0"; `summarize_placement` turns that into counts per op type.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes.backend import SessionOptions
from edgetx.runtimes.environment import ProvisionedBackend
from edgetx.runtimes.remote import WORKER, WorkerSession, worker_environment

PLACEMENT_OPTION = "edgetx.placement"  # SessionOptions.extra: "0" = do not measure placement
CPU_EP = "CPUExecutionProvider"


class VendorBackend(ProvisionedBackend):
    """A backend whose onnxruntime lives in ROOT/env and whose sessions report node placement."""

    option_prefix = ""  # SessionOptions.extra keys with this prefix configure the backend, not onnxruntime

    # --- what each vendor backend defines ------------------------------------------------------

    def worker_command(self, env: Path, stamp: dict) -> tuple[list[str], dict[str, str]]:
        """(argv that runs ort_worker.py, its environment)."""
        raise NotImplementedError

    def load_fields(self, env: Path, stamp: dict, options: SessionOptions) -> dict:
        """The worker's provider fields ("providers" or "plugin_ep") for a session with `options`."""
        raise NotImplementedError

    # --- sessions ------------------------------------------------------------------------------

    def create_session(self, model_path: Path, options: SessionOptions) -> WorkerSession:
        env, stamp = self.environment_dir()
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

    def python_worker(self, env: Path, stamp: dict) -> tuple[list[str], dict[str, str]]:
        """ort_worker.py run by the environment's own venv Python (ROOT/env/venv)."""
        return [str(env / stamp.get("python", "venv/bin/python")), str(WORKER)], worker_environment()


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
