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
            external = files.weight_bytes(model) > files.EXTERNAL_DATA_BYTES
            if external:  # a protobuf cannot hold the optimized weights either
                options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                                 files.data_file(dst).name)
                options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                                 "1024")
            ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
            optimized = files.load(dst)
            if external:  # read before the temporary folder goes (a single file is read whole by load)
                ir.external_data.load_to_model(optimized)
        return self.done(optimized)
