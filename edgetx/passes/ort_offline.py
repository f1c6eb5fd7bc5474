"""onnxruntime's own graph optimizer at a level, run once and saved, as a pass."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgetx.passes import PassResult, _ir, op_histogram
from edgetx.runtimes.worker.ort_options import session_options


class OrtOffline:
    """onnxruntime's graph optimizer at a level, run once and saved (basic is portable across
    execution providers; extended adds CPU contrib ops)."""

    def __init__(self, level: str = "extended"):
        self.level = level
        self.name = f"ort-offline-{level}"

    def __call__(self, model) -> PassResult:
        import onnxruntime as ort

        ir = _ir()
        before = op_histogram(model)
        with tempfile.TemporaryDirectory(prefix="edgetx-ort-opt-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            ir.save(model, src)
            options = session_options(ort, graph_optimization=self.level)
            options.optimized_model_filepath = str(dst)
            ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
            optimized = ir.load(dst)  # a single file: its weights are read into memory here
        return PassResult(optimized, True, {"ops_before": before, "ops_after": op_histogram(optimized)})

