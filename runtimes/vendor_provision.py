"""Shared steps for provisioning the vendor backends (qnn, openvino, xnnpack) into a root folder.

Each vendor stack gets ROOT/env (built in a temporary folder beside it, checked by running it,
stamped last and renamed into place, so an interrupted run never leaves a half environment that
looks ready) and ROOT/cache (downloads, kept: re-provisioning downloads nothing). No root, no
host apt changes: Python stacks are venvs of this interpreter filled from wheels pip downloaded
into ROOT/cache/wheels; Debian stacks use arm64_provision's private apt.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edgetx.errors import BackendError

STAMP = "provisioned.json"
WORKER_DIR = Path(__file__).resolve().parent  # ort_worker.py, wire.py and onnx_nodes.py


def root_from_env(variable: str, default: str) -> Path:
    """ROOT from the environment variable, else the default (both made absolute)."""
    return Path(os.environ.get(variable) or default).expanduser().absolute()


def read_stamp(root: Path) -> dict | None:
    """The stamp of a complete environment under `root`, or None."""
    try:
        return json.loads((root / "env" / STAMP).read_text())
    except (OSError, ValueError):
        return None


class Steps:
    """Progress lines with the time since the start: `[qnn  12.3s] message`."""

    def __init__(self, label: str):
        self.label, self.start = label, time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{self.label} {time.monotonic() - self.start:5.1f}s] {message}", flush=True)


def run(argv: list[str], what: str, **kwargs) -> str:
    """Run a command; on failure raise with its last lines of output and what it was for."""
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode:
        tail = "\n  ".join((result.stderr.strip() or result.stdout.strip()).splitlines()[-8:])
        raise BackendError(f"{what} failed ({' '.join(argv[:4])} ... exit {result.returncode}):\n  {tail}")
    return result.stdout


def fetch_wheels(cache: Path, pins: list[str], step: Steps) -> Path:
    """Wheels for `pins` (and their dependencies) for this interpreter, cached in cache/wheels."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
           "-d", str(wheels)]
    offline = subprocess.run([*pip, "--no-index", "--find-links", str(wheels), *pins], capture_output=True, text=True)
    if offline.returncode == 0:
        step(f"wheels cached ({', '.join(pins)})")
    else:
        step(f"downloading wheels: {', '.join(pins)} (and dependencies)")
        run([*pip, *pins], f"pip download {' '.join(pins)}")
    return wheels


def make_venv(work: Path, wheels: Path, pins: list[str], step: Steps) -> Path:
    """A venv of this interpreter at work/venv with `pins` installed from the cached wheels only."""
    venv = work / "venv"
    step(f"creating a venv and installing {', '.join(pins)} from {wheels}")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], "python -m venv")
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
         "--no-index", "--find-links", str(wheels), *pins], f"pip install {' '.join(pins)} into {venv}")
    return python


def check_python(argv: list[str], code: str, what: str, env: dict | None = None) -> dict:
    """Run `code` with the environment's Python (argv); it prints one JSON line, returned."""
    out = run([*argv, "-c", code], what, env=env or {"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1",
                                                         "PYTHONDONTWRITEBYTECODE": "1"})
    return json.loads(out.strip().splitlines()[-1])


def provision(root: Path, wanted: dict, build: Callable[[Path, Path, Steps], dict], step: Steps,
              force: bool = False) -> dict:
    """Build ROOT/env with `build(work, cache, step) -> stamp` unless a stamp there already has every
    `wanted` item (idempotent). The stamp is written last; the folder is renamed into place."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one provisioning of a root at a time
        stamp = read_stamp(root)
        if stamp and not force and all(stamp.get(k) == v for k, v in wanted.items()):
            step(f"already provisioned: {root / 'env'} ({', '.join(f'{k} {v}' for k, v in wanted.items())}); "
                 "nothing to do")
            return stamp
        for stale in root.glob(".env-*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        work, old, final = root / f".env-{os.getpid()}.partial", root / f".env-{os.getpid()}.old.partial", root / "env"
        work.mkdir()
        try:
            stamp = {**build(work, root / "cache", step), **wanted,
                     "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            (work / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")  # last: marks the environment complete
        except BaseException:  # failed or interrupted: leave no partial environment behind
            shutil.rmtree(work, ignore_errors=True)
            raise
        if final.exists():
            final.rename(old)
        work.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        step(f"ready: {final} ({', '.join(f'{k} {v}' for k, v in stamp.items() if k != 'created')})")
        return stamp


def main(label: str, doc: str, variable: str, default: str, do: Callable[[Path, bool, Steps], dict],
         argv: list[str] | None = None) -> int:
    """The command line every vendor provisioning module shares: [--root DIR] [--force]."""
    parser = argparse.ArgumentParser(prog=f"python -m edgetx.runtimes.{label}_provision", description=doc)
    parser.add_argument("--root", type=Path, default=None, help=f"where to put it (default: ${variable} or {default})")
    parser.add_argument("--force", action="store_true", help="rebuild the environment (downloads stay cached)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on kill too
    root = args.root.expanduser().absolute() if args.root else root_from_env(variable, default)
    step = Steps(label)
    try:
        do(root, args.force, step)
    except BackendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-built was left behind", file=sys.stderr)
        return 130
    return 0
