"""onnxruntime's own graph optimizer at a level, run once and saved, as a pass."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgetx.passes.base import FunctionalGraphPass, PassResult, ir
from edgetx.runtimes.worker.ort_options import session_options


class OrtOffline(FunctionalGraphPass):
    """onnxruntime's graph optimizer at a level, run once and saved (basic is portable across
    execution providers; extended adds CPU contrib ops). onnxruntime works on files, so the model
    goes through a temporary folder and comes back as a new model."""

    def __init__(self, level: str = "extended"):
        self.level = level
        self.name = f"ort-offline-{level}"

    def call(self, model: ir.Model) -> PassResult:
        import onnxruntime as ort

        from edgetx.passes import files

        with tempfile.TemporaryDirectory(prefix="edgetx-ort-opt-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            files.save(model, src)
            options = session_options(ort, graph_optimization=self.level)
            options.optimized_model_filepath = str(dst)
            ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
            optimized = files.load(dst)  # a single file: its weights are read into memory here
        return self.done(optimized)
