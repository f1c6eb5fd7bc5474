"""A stand-alone onnxruntime worker: loads one model and runs it on request over stdin/stdout.

Run by the out-of-process backends (e.g. ARM64 under QEMU) with any Python that has numpy and
onnxruntime; it imports nothing from edgetx but `wire.py`, which sits beside it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wire  # noqa: E402  (found beside this file, also under emulation where edgetx is not installed)

LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def load(request: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if request.get("threads"):
        options.intra_op_num_threads = int(request["threads"])
        options.inter_op_num_threads = 1
    level = request.get("graph_optimization")
    if level:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    for key, value in (request.get("extra") or {}).items():
        options.add_session_config_entry(key, str(value))
    return ort.InferenceSession(request["model"], options, providers=["CPUExecutionProvider"])


def serve(stdin, stdout) -> None:
    session = None
    while True:
        try:
            request, arrays = wire.read_message(stdin)
        except EOFError:
            return
        try:
            if request["op"] == "close":
                wire.write_message(stdout, {"ok": True})
                return
            if request["op"] == "load":
                import onnxruntime as ort
                import platform

                session = load(request)
                wire.write_message(stdout, {"ok": True, "outputs": [o.name for o in session.get_outputs()],
                                            "runtime": f"onnxruntime {ort.__version__}",
                                            "machine": platform.machine()})
            elif request["op"] == "run":
                if session is None:
                    raise RuntimeError("run before load")
                names = request.get("outputs") or [o.name for o in session.get_outputs()]
                start = time.perf_counter()
                values = session.run(names, arrays)
                seconds = time.perf_counter() - start
                wire.write_message(stdout, {"ok": True, "seconds": seconds}, dict(zip(names, values)))
            else:
                raise ValueError(f"unknown op {request['op']!r}")
        except Exception as e:  # report to the caller, keep serving
            wire.write_message(stdout, {"ok": False, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
