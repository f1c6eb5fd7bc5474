"""The "arm64" backend: the aarch64 onnxruntime wheel (the build ARM Linux/Android-class CPUs run),
executed on this x86-64 host under QEMU user-mode emulation of a NEON CPU.

The model runs in `ort_worker.py` inside an aarch64 CPython (Debian bookworm's python3.11 plus the
aarch64 onnxruntime/numpy wheels) that `python -m edgetx.runtimes.arm64_provision` puts under
ROOT/env (ROOT = $EDGETX_ARM64_ROOT, default ~/.cache/edgetx/arm64). Tensors cross over `wire`.

The emulated CPU defaults to neoverse-n1 (NEON, no SVE). Choose another with the environment
variable EDGETX_ARM64_CPU or SessionOptions.extra["qemu.cpu"] (e.g. cortex-a76, cortex-a55).
Prefer NEON cores: SVE cores (neoverse-v1, max) are ~20x slower to emulate, and `max` enables
SME int8 kernels whose results legitimately differ. Emulation is 50-300x slower than this host,
and each session starts a worker (`import onnxruntime` alone takes ~2.5 s): reuse sessions.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes.base import Availability, Backend, SessionOptions, register_backend
from edgetx.runtimes.remote import WorkerSession

DEFAULT_ROOT = Path("~/.cache/edgetx/arm64")
DEFAULT_CPU = "neoverse-n1"
CPU_OPTION = "qemu.cpu"  # SessionOptions.extra key; not forwarded to onnxruntime
STAMP = "provisioned.json"  # written last by arm64_provision: the environment is complete
WORKER = Path(__file__).resolve().with_name("ort_worker.py")


def root() -> Path:
    """Where the provisioned environment lives ($EDGETX_ARM64_ROOT or ~/.cache/edgetx/arm64)."""
    return Path(os.environ.get("EDGETX_ARM64_ROOT") or DEFAULT_ROOT).expanduser().absolute()


def _provision_hint(where: Path) -> str:
    custom = "" if where == DEFAULT_ROOT.expanduser().absolute() else f" --root {where}"
    return f"run `python -m edgetx.runtimes.arm64_provision{custom}` (or `make provision-arm64`)"


class Arm64Backend(Backend):
    name = "arm64"
    description = "onnxruntime aarch64 wheel (ARM64 CPU, NEON) under QEMU user-mode emulation"
    max_parameters = 20_000_000  # emulation is 50-300x slower: a 4.8M GPT verifies in ~35 s per variant

    def _environment(self) -> tuple[Path, dict]:
        """(ROOT/env, its stamp), or raise BackendError saying what is missing and how to fix it."""
        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            raise BackendError(f"the arm64 backend emulates aarch64 on x86-64 Linux hosts; this host is "
                               f"{platform.system()} {platform.machine()}")
        where = root()
        env = where / "env"
        try:
            stamp = json.loads((env / STAMP).read_text())
        except FileNotFoundError:
            raise BackendError(f"not provisioned at {where}: {_provision_hint(where)}") from None
        except (OSError, ValueError) as e:
            raise BackendError(f"{env / STAMP} is unreadable ({e}): {_provision_hint(where)} --force") from None
        for needed in (env / "bin/qemu-aarch64", env / "sysroot/usr/bin/python3.11"):
            if not os.access(needed, os.X_OK):
                raise BackendError(f"{needed} is missing or not executable: {_provision_hint(where)} --force")
        if not WORKER.is_file():
            raise BackendError(f"the worker script {WORKER} is missing from this edgetx install; reinstall edgetx")
        return env, stamp

    def availability(self) -> Availability:
        try:
            env, stamp = self._environment()
        except BackendError as e:
            return Availability(False, str(e))
        reason = (f"onnxruntime {stamp.get('onnxruntime', '?')} (aarch64, python {stamp.get('python', '?')}) under "
                  f"QEMU {stamp.get('qemu', '?').split(':')[-1].split('+')[0]}, cpu {self.cpu()}; {env}")
        try:
            from importlib.metadata import version

            host = version("onnxruntime")
            if stamp.get("onnxruntime") != host:
                reason += f"; note: this host has onnxruntime {host}, re-provision with --force to match"
        except Exception:  # the host's onnxruntime is only compared, not needed
            pass
        return Availability(True, reason)

    @staticmethod
    def cpu(options: SessionOptions | None = None) -> str:
        """The emulated CPU model: SessionOptions.extra["qemu.cpu"], else $EDGETX_ARM64_CPU, else neoverse-n1."""
        if options and options.extra.get(CPU_OPTION):
            return options.extra[CPU_OPTION]
        return os.environ.get("EDGETX_ARM64_CPU") or DEFAULT_CPU

    def create_session(self, model_path: Path, options: SessionOptions) -> WorkerSession:
        env, _ = self._environment()
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
        argv = [str(env / "bin/qemu-aarch64"), "-L", str(sysroot), str(sysroot / "usr/bin/python3.11"), str(WORKER)]
        worker_env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"), "LC_ALL": "C.UTF-8",
                      "PYTHONPATH": str(sysroot / "site"), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
                      "QEMU_CPU": cpu}
        forwarded = {k: v for k, v in options.extra.items() if k != CPU_OPTION}
        worker_options = SessionOptions(options.threads, options.graph_optimization, forwarded)
        return WorkerSession(argv, model_path, worker_options, label=f"arm64 ({cpu}, {model_path.name})", env=worker_env)


class Arm64OrtBackend(Arm64Backend):
    """The same emulated ARM64 onnxruntime, loading the variant's .ort (mobile format) file."""

    name = "arm64-ort"
    description = "onnxruntime aarch64 wheel under QEMU, loading the variant's .ort (mobile format) file"
    model_format = "ort"


register_backend(Arm64Backend())
register_backend(Arm64OrtBackend())
