"""The "xnnpack" backend: onnxruntime's XNNPACK execution provider (the CPU kernels mobile builds use).

No PyPI or npm onnxruntime is built with XNNPACK; Debian trixie's python3-onnxruntime 1.21 is.
`python -m edgetx.runtimes.xnnpack_provision` unpacks it with its own python3.13, numpy and C
library under ROOT/env/root (ROOT = $EDGETX_XNNPACK_ROOT, default ~/.cache/edgetx/xnnpack), and
`ort_worker.py` runs through that folder's own ld-linux-x86-64.so.2, so nothing on the host changes.
XNNPACK takes nodes only with static shapes (model_format "onnx-fixed") and only some op types
(Gemm/MatMul, Softmax, Conv, pooling...): the rest of a transformer runs on the CPU EP of the same
onnxruntime 1.21, which is older than the host's: graphs fused for a newer onnxruntime may not run.
"""

from __future__ import annotations

from pathlib import Path

from edgetx.runtimes.base import SessionOptions, register_backend
from edgetx.runtimes.vendor import VendorBackend, base_env
from edgetx.runtimes.vendor_provision import WORKER_DIR


class XnnpackBackend(VendorBackend):
    name = "xnnpack"
    description = "onnxruntime XNNPACK EP (Debian trixie's onnxruntime 1.21, unpacked); fixed shapes"
    model_format = "onnx-fixed"
    root_variable = "EDGETX_XNNPACK_ROOT"
    default_root = "~/.cache/edgetx/xnnpack"
    provision_module = "xnnpack_provision"
    make_target = "provision-xnnpack"
    provider = "XnnpackExecutionProvider"
    option_prefix = "xnnpack."

    def required_files(self, env: Path, stamp: dict) -> list[Path]:
        from edgetx.runtimes.xnnpack_provision import LIBDIR  # not at import: see web_backend._root

        return [env / "root" / LIBDIR / "ld-linux-x86-64.so.2"]

    def describe(self, stamp: dict) -> str:
        return (f"onnxruntime {stamp.get('onnxruntime', '?')} from Debian {stamp.get('suite', '?')} "
                f"(python {stamp.get('python', '?')})")

    def worker_command(self, env: Path, stamp: dict) -> tuple[list[str], dict[str, str]]:
        from edgetx.runtimes.xnnpack_provision import command

        argv, extra = command(env / "root")
        return [*argv, str(WORKER_DIR / "ort_worker.py")], base_env(**extra)

    def load_fields(self, env: Path, stamp: dict, options: SessionOptions) -> dict:
        threads = options.threads or 1
        return {"providers": [[self.provider, {"intra_op_num_threads": str(threads)}], "CPUExecutionProvider"]}


register_backend(XnnpackBackend())
