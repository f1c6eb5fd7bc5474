"""The "openvino" backend: onnxruntime's OpenVINO execution provider on this CPU.

Intel's onnxruntime-openvino wheel ships its own onnxruntime (1.24), so it runs in `ort_worker.py`
inside the venv its installer (provision.py, `edgetx provision openvino`) puts under ROOT/env. Dynamic shapes are fine.
OpenVINO reads the model with its own ONNX frontend: onnxruntime's contrib fusions (e.g.
SkipLayerNormalization with 4 outputs) can make it refuse the whole model at load; a graph built
with `edgetx build --no-optimize` avoids them. Device: SessionOptions.extra["openvino.device_type"]
or $EDGETX_OPENVINO_DEVICE, default CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgetx.runtimes.backend import Capabilities, SessionOptions, register_backend
from edgetx.runtimes.vendor import CPU_EP, VendorBackend


class OpenVinoBackend(VendorBackend):
    name = "openvino"
    description = "onnxruntime OpenVINO EP (Intel's onnxruntime-openvino build), CPU device"
    capabilities = Capabilities(reports_placement=True, provider="OpenVINOExecutionProvider")
    environment = "openvino"
    installer = "edgetx.runtimes.openvino.provision"
    option_prefix = "openvino."

    def required_files(self, env: Path, stamp: dict) -> list[Path]:
        return [env / stamp.get("python", "venv/bin/python")]

    def describe(self, stamp: dict) -> str:
        return f"onnxruntime-openvino {stamp.get('onnxruntime', '?')}, device {self.device(SessionOptions())}"

    @staticmethod
    def device(options: SessionOptions) -> str:
        return options.extra.get("openvino.device_type") or os.environ.get("EDGETX_OPENVINO_DEVICE") or "CPU"

    def worker_command(self, env: Path, stamp: dict) -> tuple[list[str], dict[str, str]]:
        return self.python_worker(env, stamp)

    def load_fields(self, env: Path, stamp: dict, options: SessionOptions) -> dict:
        return {"providers": [[self.capabilities.provider, {"device_type": self.device(options)}], CPU_EP]}


register_backend(OpenVinoBackend())
