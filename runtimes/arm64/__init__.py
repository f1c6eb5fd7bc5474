"""The "arm64" backend: the aarch64 onnxruntime wheel (the build ARM Linux/Android-class CPUs run),
executed on this x86-64 host under QEMU user-mode emulation of a NEON CPU.

The model runs in `ort_worker.py` inside an aarch64 CPython (Debian bookworm's python3.11 plus the
aarch64 onnxruntime/numpy wheels) that its installer (provision.py, run by `edgetx provision arm64`) puts under
ROOT/env (edgetx.runtimes.environment: `edgetx provision arm64`). Tensors cross over `wire`.

The emulated CPU defaults to neoverse-n1 (NEON, no SVE). Choose another with the environment
variable EDGETX_ARM64_CPU or SessionOptions.extra["qemu.cpu"] (e.g. cortex-a76, cortex-a55).
Prefer NEON cores: SVE cores (neoverse-v1, max) are ~20x slower to emulate, and `max` enables
SME int8 kernels whose results legitimately differ. Emulation is 50-300x slower than this host,
and each session starts a worker (`import onnxruntime` alone takes ~2.5 s): reuse sessions.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes.backend import Capabilities, SessionOptions, register_backend
from edgetx.runtimes.environment import ProvisionedBackend
from edgetx.runtimes.remote import WORKER, WorkerSession, worker_environment

DEFAULT_CPU = "neoverse-n1"
CPU_OPTION = "qemu.cpu"  # SessionOptions.extra key; not forwarded to onnxruntime
QEMU, PYTHON = "bin/qemu-aarch64", "sysroot/usr/bin/python3.11"  # inside ROOT/env


class Arm64Backend(ProvisionedBackend):
    name = "arm64"
    description = "onnxruntime aarch64 wheel (ARM64 CPU, NEON) under QEMU user-mode emulation"
    # emulation is 50-300x slower: a 4.8M GPT verifies in ~35 s per variant
    capabilities = Capabilities(max_parameters=20_000_000)
    environment = "arm64"
    installer = "edgetx.runtimes.arm64.provision"

    def required_files(self, env: Path, stamp: dict) -> list[Path]:
        return [env / QEMU, env / PYTHON]

    def describe(self, stamp: dict) -> str:
        text = (f"onnxruntime {stamp.get('onnxruntime', '?')} (aarch64, python {stamp.get('python', '?')}) under "
                f"QEMU {stamp.get('qemu', '?').split(':')[-1].split('+')[0]}, cpu {self.cpu()}")
        try:
            host = metadata.version("onnxruntime")
        except metadata.PackageNotFoundError:  # the host's onnxruntime is only compared, not needed
            return text
        if stamp.get("onnxruntime") != host:
            text += f"; note: this host has onnxruntime {host}, re-provision with --force to match"
        return text

    @staticmethod
    def cpu(options: SessionOptions | None = None) -> str:
        """The emulated CPU model: SessionOptions.extra["qemu.cpu"], else $EDGETX_ARM64_CPU, else neoverse-n1."""
        if options and options.extra.get(CPU_OPTION):
            return options.extra[CPU_OPTION]
        return os.environ.get("EDGETX_ARM64_CPU") or DEFAULT_CPU

    def create_session(self, model_path: Path, options: SessionOptions) -> WorkerSession:
        env, _ = self.environment_dir()
        model_path = Path(model_path)
        if not model_path.is_file():
            raise BackendError(f"arm64: model file {model_path} does not exist")
        cpu = self.cpu(options)
        sysroot = env / "sysroot"
        # The worker and the model are read through their host paths: QEMU's -L prefix only redirects
        # absolute paths that exist inside the sysroot, and the sysroot has no /work, /home or /tmp.
        for path in (WORKER, model_path.resolve()):
            if (sysroot / path.relative_to("/")).exists():
                raise BackendError(f"arm64: {path} is shadowed by {sysroot / path.relative_to('/')} under QEMU; "
                                   "move the file elsewhere (e.g. under your home folder)")
        argv = [str(env / QEMU), "-L", str(sysroot), str(env / PYTHON), str(WORKER)]
        worker_env = worker_environment(PYTHONPATH=str(sysroot / "site"), QEMU_CPU=cpu)
        forwarded = {k: v for k, v in options.extra.items() if k != CPU_OPTION}
        worker_options = SessionOptions(options.threads, options.graph_optimization, forwarded)
        return WorkerSession(argv, model_path, worker_options, label=f"arm64 ({cpu}, {model_path.name})", env=worker_env)


class Arm64OrtBackend(Arm64Backend):
    """The same emulated ARM64 onnxruntime, loading the variant's .ort (mobile format) file."""

    name = "arm64-ort"
    description = "onnxruntime aarch64 wheel under QEMU, loading the variant's .ort (mobile format) file"
    capabilities = Capabilities(model_format="ort", max_parameters=20_000_000)


register_backend(Arm64Backend())
register_backend(Arm64OrtBackend())
