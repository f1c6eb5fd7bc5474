"""Backends that run in an environment of their own, made by `edgetx provision NAME` (an aarch64 Python under
QEMU, onnxruntime-web in Node, a vendor's onnxruntime): where that environment lives, whether it is
complete, and what to run when it is not. The runtime side only reads; installing is `edgetx.runtimes.install`.

One root for everyone: ROOT of environment NAME is `$EDGETX_<NAME>_ROOT` when set (an explicit override),
else `$EDGETX_HOME/<name>`, else `~/.cache/edgetx/<name>`. `make provision-NAME`, `edgetx provision NAME`
and `edgetx backends` all use it. ROOT/env holds the environment, its stamp (`provisioned.json`, written
last by the installer) says it is complete; ROOT/cache holds the downloads.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes.backend import Availability, Backend

STAMP = "provisioned.json"
DEFAULT_HOME = "~/.cache/edgetx"
# Environments that are not a backend's: toolchains `edgetx provision NAME` installs into the same root
# (name -> installer module). "native": headers and libraries of the C verifier (runtimes/native/).
TOOLCHAINS = {"native": "edgetx.runtimes.native.provision"}


def edgetx_home() -> Path:
    """Where provisioned environments live unless one is overridden: $EDGETX_HOME or ~/.cache/edgetx."""
    return Path(os.environ.get("EDGETX_HOME") or DEFAULT_HOME).expanduser().absolute()


def root_variable(environment: str) -> str:
    """The environment variable that overrides one environment's root, e.g. EDGETX_ARM64_ROOT."""
    return f"EDGETX_{environment.upper().replace('-', '_')}_ROOT"


def environment_root(environment: str) -> Path:
    override = os.environ.get(root_variable(environment))
    return Path(override).expanduser().absolute() if override else edgetx_home() / environment


def read_stamp(root: Path) -> dict | None:
    """The stamp of a complete environment under `root`, or None."""
    try:
        return json.loads((root / "env" / STAMP).read_text())
    except (OSError, ValueError):
        return None


def provision_hint(environment: str, root: Path | None = None, force: bool = False) -> str:
    """The command that provisions `environment` (with --root when it is not at the usual place)."""
    root = root or environment_root(environment)
    custom = "" if root == edgetx_home() / environment else f" --root {root}"
    again = " --force" if force else ""
    return f"run `edgetx provision {environment}{custom}{again}` (or `make provision-{environment}`)"


class ProvisionedBackend(Backend):
    """A backend that runs in ROOT/env, checked here before every session: host, stamp, needed files."""

    machines = ("x86_64", "AMD64")  # hosts the environment is provisioned for

    def root(self) -> Path:
        return environment_root(self.environment)

    def host_problem(self) -> str | None:
        """Why this host cannot run the environment at all, or None."""
        if platform.system() != "Linux" or platform.machine() not in self.machines:
            return f"{self.name} is provisioned for x86-64 Linux; this host is {platform.system()} {platform.machine()}"
        return None

    def required_files(self, env: Path, stamp: dict) -> list[Path]:
        """Files the environment must hold (checked on every session)."""
        return []

    def describe(self, stamp: dict) -> str:
        """The environment in a few words, for `edgetx backends`."""
        return f"onnxruntime {stamp.get('onnxruntime', '?')}"

    def environment_dir(self) -> tuple[Path, dict]:
        """(ROOT/env, its stamp), or a BackendError saying what is missing and what to run."""
        problem = self.host_problem()
        if problem:
            raise BackendError(problem)
        where = self.root()
        env = where / "env"
        try:
            stamp = json.loads((env / STAMP).read_text())
        except FileNotFoundError:
            raise BackendError(f"not provisioned at {where}: {provision_hint(self.environment, where)}") from None
        except (OSError, ValueError) as e:
            raise BackendError(f"{env / STAMP} is unreadable ({e}): {provision_hint(self.environment, where, True)}"
                               ) from None
        for needed in self.required_files(env, stamp):
            if not needed.exists():
                raise BackendError(f"{needed} is missing: {provision_hint(self.environment, where, True)}")
        return env, stamp

    def availability(self) -> Availability:
        try:
            env, stamp = self.environment_dir()
        except BackendError as e:
            return Availability(False, str(e))
        return Availability(True, f"{self.describe(stamp)}; {env}")
