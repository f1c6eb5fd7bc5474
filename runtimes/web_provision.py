"""Provision the web backend: install onnxruntime-web into a folder of its own with npm.

    python -m edgetx.runtimes.web_provision [--root DIR]

The folder (default `$EDGETX_WEB_ROOT` or `~/.cache/edgetx/web`) gets `node_modules/onnxruntime-web`,
its own npm cache (so it is self-contained and can be removed as a whole), and a stamp file,
written last, that says the install finished. Running it again when the stamp matches does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgetx.runtimes.web_backend import NPM_PACKAGES, ORT_WEB_VERSION  # noqa: E402  (pins kept with the backend)
STAMP = ".edgetx-web-stamp.json"


def default_root() -> Path:
    """The provisioned folder: `$EDGETX_WEB_ROOT`, else `~/.cache/edgetx/web`."""
    env = os.environ.get("EDGETX_WEB_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgetx" / "web"


def module_dir(root: Path) -> Path:
    """Where onnxruntime-web lands inside `root`."""
    return root / "node_modules" / "onnxruntime-web"


def installed_version(root: Path, package: str = "onnxruntime-web") -> str | None:
    """The version of an npm package installed under `root`, or None."""
    try:
        return json.loads((root / "node_modules" / package / "package.json").read_text()).get("version")
    except (OSError, ValueError):
        return None


def is_provisioned(root: Path) -> bool:
    """True when the stamp says this exact version was installed and the package is still there."""
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return all(stamp.get(name) == version and installed_version(root, name) == version
               for name, version in NPM_PACKAGES.items())


def provision(root: Path, force: bool = False) -> str:
    """Install onnxruntime-web@ORT_WEB_VERSION under `root`; return a one-line summary."""
    root = Path(root).expanduser().absolute()
    if is_provisioned(root) and not force:
        return f"onnxruntime-web {ORT_WEB_VERSION} already provisioned in {root}"
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH; install Node.js >= 18 with npm (e.g. apt-get install nodejs npm) "
                           "and run this again")
    root.mkdir(parents=True, exist_ok=True)
    (root / STAMP).unlink(missing_ok=True)
    if not (root / "package.json").exists():  # keeps npm from walking up to an enclosing project
        (root / "package.json").write_text(json.dumps({"name": "edgetx-web-runtime", "private": True}) + "\n")
    argv = [npm, "install", "--prefix", str(root), "--cache", str(root / ".npm-cache"), "--no-audit",
            "--no-fund", "--save-exact", *(f"{name}@{version}" for name, version in NPM_PACKAGES.items())]
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"`{' '.join(argv[1:])}` failed ({tail}); check that the npm registry is reachable")
    for name, wanted in NPM_PACKAGES.items():
        version = installed_version(root, name)
        if version != wanted:
            raise RuntimeError(f"npm finished but {root / 'node_modules' / name} holds version {version!r}, "
                               f"not {wanted}; remove {root} and run this again")
    stamp = {**NPM_PACKAGES, "seconds": round(time.perf_counter() - started, 1),
             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (root / STAMP).write_text(json.dumps(stamp) + "\n")
    return f"onnxruntime-web {ORT_WEB_VERSION} provisioned in {root} ({stamp['seconds']} s)"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m edgetx.runtimes.web_provision", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="folder to install into (default: $EDGETX_WEB_ROOT or ~/.cache/edgetx/web)")
    parser.add_argument("--force", action="store_true", help="reinstall even when already provisioned")
    args = parser.parse_args(argv)
    try:
        print(provision(args.root or default_root(), force=args.force))
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
