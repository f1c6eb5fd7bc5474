"""The "xnnpack" backend: onnxruntime's XNNPACK execution provider (the CPU kernels mobile builds use).

No PyPI or npm onnxruntime is built with XNNPACK; Debian trixie's python3-onnxruntime 1.21 is.
its installer (provision.py, `edgetx provision xnnpack`) unpacks it with its own python3.13, numpy and C
library under ROOT/env/root, and
`ort_worker.py` runs through that folder's own ld-linux-x86-64.so.2, so nothing on the host changes.
XNNPACK takes nodes only with static shapes (model_format "onnx-fixed") and only some op types
(Gemm/MatMul, Softmax, Conv, pooling...): the rest of a transformer runs on the CPU EP of the same
onnxruntime 1.21, which is older than the host's: graphs fused for a newer onnxruntime may not run.
"""

from __future__ import annotations

from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes.backend import FIXED_FORMAT, Capabilities, SessionOptions, register_backend
from edgetx.runtimes.remote import WORKER, worker_environment
from edgetx.runtimes.vendor import CPU_EP, VendorBackend

LIBDIR = "usr/lib/x86_64-linux-gnu"  # inside the unpacked Debian root


def command(root: Path) -> tuple[list[str], dict[str, str]]:
    """(argv prefix that runs the unpacked python, its environment): the folder's own loader and libraries."""
    lib = root / LIBDIR
    python = [p for p in sorted((root / "usr/bin").glob("python3.[0-9]*")) if p.name.replace("python3.", "").isdigit()]
    if not python:
        raise BackendError(f"no usr/bin/python3.N under {root}")
    argv = [str(lib / "ld-linux-x86-64.so.2"), "--library-path", f"{lib}:{lib}/blas:{lib}/lapack", str(python[-1])]
    return argv, {"PYTHONHOME": str(root / "usr")}


class XnnpackBackend(VendorBackend):
    name = "xnnpack"
    description = "onnxruntime XNNPACK EP (Debian trixie's onnxruntime 1.21, unpacked); fixed shapes"
    capabilities = Capabilities(model_format=FIXED_FORMAT, reports_placement=True, provider="XnnpackExecutionProvider")
    environment = "xnnpack"
    installer = "edgetx.runtimes.xnnpack.provision"
    option_prefix = "xnnpack."

    def required_files(self, env: Path, stamp: dict) -> list[Path]:
        return [env / "root" / LIBDIR / "ld-linux-x86-64.so.2"]

    def describe(self, stamp: dict) -> str:
        return (f"onnxruntime {stamp.get('onnxruntime', '?')} from Debian {stamp.get('suite', '?')} "
                f"(python {stamp.get('python', '?')})")

    def worker_command(self, env: Path, stamp: dict) -> tuple[list[str], dict[str, str]]:
        argv, extra = command(env / "root")
        return [*argv, str(WORKER)], worker_environment(**extra)

    def load_fields(self, env: Path, stamp: dict, options: SessionOptions) -> dict:
        threads = options.threads or 1
        return {"providers": [[self.capabilities.provider, {"intra_op_num_threads": str(threads)}], CPU_EP]}


register_backend(XnnpackBackend())
