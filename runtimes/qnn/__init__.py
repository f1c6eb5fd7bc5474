"""The "qnn" backend: Qualcomm's QNN execution provider on the Hexagon NPU (HTP) simulator.

The onnxruntime-qnn plugin EP (registered with `ort.register_execution_provider_library`) runs in
`ort_worker.py` inside the venv its installer (provision.py, run by `edgetx provision qnn`) puts under
ROOT/env (edgetx.runtimes.environment). On x86-64 Linux, backend_type=htp runs the
HTP graph in Qualcomm's simulator: 100-500x slower than the CPU, numerically like the device.

The HTP needs fixed shapes (model_format "onnx-fixed": `edgetx convert BUNDLE --to fixed --shape
...`), and computes float graphs in fp16 (`capabilities.float_precision`), so an fp32 variant is judged by the
fp16 tolerance. Static QDQ variants (`--quantize qdq-a16w8` / `qdq-a8w8`) are the real NPU path.
Nodes the HTP cannot take run on onnxruntime's CPU EP: every session reports the placement.

HTP target: SessionOptions.extra["qnn.htp_arch"] / ["qnn.soc_model"], else $EDGETX_QNN_HTP_ARCH /
$EDGETX_QNN_SOC_MODEL, else 73 / 60 (a Snapdragon 8 Gen 2-class v73 HTP). Running inference through
the simulator on Linux x86 is not a documented QNN use and may change between releases: the
backend is optional, and reports unavailable (with the reason) when the stack is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgetx.runtimes.backend import FIXED_FORMAT, Capabilities, SessionOptions, register_backend
from edgetx.runtimes.vendor import VendorBackend

DEFAULT_HTP_ARCH = "73"
DEFAULT_SOC_MODEL = "60"


class QnnBackend(VendorBackend):
    name = "qnn"
    description = "onnxruntime QNN EP (plugin), Hexagon HTP simulator; fixed shapes, floats run as fp16"
    # The HTP runs float graphs in fp16 (fp32 variants get the fp16 tolerance); the simulator takes ~0.8 s per
    # decode step of a 4.8M GPT.
    capabilities = Capabilities(model_format=FIXED_FORMAT, float_precision="fp16", reports_placement=True,
                                provider="QNNExecutionProvider", max_parameters=30_000_000)
    environment = "qnn"
    installer = "edgetx.runtimes.qnn.provision"
    option_prefix = "qnn."

    def required_files(self, env: Path, stamp: dict) -> list[Path]:
        return [env / stamp.get("python", "venv/bin/python"), Path(self._library(env, stamp))]

    @staticmethod
    def _library(env: Path, stamp: dict) -> str:
        return stamp.get("library", "").replace("{env}", str(env))

    def describe(self, stamp: dict) -> str:
        arch, soc = self.target(SessionOptions())
        return (f"onnxruntime {stamp.get('onnxruntime', '?')} + onnxruntime-qnn {stamp.get('onnxruntime-qnn', '?')}, "
                f"HTP simulator (htp_arch {arch}, soc_model {soc})")

    @staticmethod
    def target(options: SessionOptions) -> tuple[str, str]:
        arch = options.extra.get("qnn.htp_arch") or os.environ.get("EDGETX_QNN_HTP_ARCH") or DEFAULT_HTP_ARCH
        soc = options.extra.get("qnn.soc_model") or os.environ.get("EDGETX_QNN_SOC_MODEL") or DEFAULT_SOC_MODEL
        return arch, soc

    def worker_command(self, env: Path, stamp: dict) -> tuple[list[str], dict[str, str]]:
        return self.python_worker(env, stamp)

    def load_fields(self, env: Path, stamp: dict, options: SessionOptions) -> dict:
        arch, soc = self.target(options)
        return {"plugin_ep": {"name": self.capabilities.provider, "library": self._library(env, stamp),
                              "options": {"backend_type": "htp", "htp_arch": arch, "soc_model": soc}}}


register_backend(QnnBackend())
