"""Provision the "xnnpack" backend: Debian trixie's onnxruntime (python3-onnxruntime 1.21, built
with the XNNPACK execution provider, which no PyPI or npm onnxruntime includes), unpacked into a
folder with its own python3.13, numpy and C library, and run through that folder's ld-linux.

    python -m edgetx.runtimes.xnnpack_provision [--root DIR] [--force]     # or: make provision-xnnpack

ROOT is $EDGETX_XNNPACK_ROOT (default ~/.cache/edgetx/xnnpack). No root and the host's apt state is
untouched: apt-get runs with a private state/cache/source list under ROOT/cache (see
arm64_provision.PrivateApt) to download the .debs of python3-onnxruntime and its whole dependency
closure (~60 debs, ~50 MB), which `dpkg-deb -x` unpacks into ROOT/env/root.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes import vendor_provision as vp
from edgetx.runtimes.arm64_provision import KEYRING, PrivateApt, host_mirror

DEFAULT_ROOT = "~/.cache/edgetx/xnnpack"
VARIABLE = "EDGETX_XNNPACK_ROOT"
SUITE = "trixie"
PACKAGES = ["python3-onnxruntime"]
LIBDIR = "usr/lib/x86_64-linux-gnu"
CHECK = ("import json, numpy, onnxruntime as ort, platform; "
         "print(json.dumps({'onnxruntime': ort.__version__, 'numpy': numpy.__version__, "
         "'python': platform.python_version(), 'providers': ort.get_available_providers()}))")


def command(root: Path) -> tuple[list[str], dict[str, str]]:
    """(argv prefix that runs the unpacked python, its environment): the folder's own loader and libraries."""
    lib = root / LIBDIR
    python = sorted((root / "usr/bin").glob("python3.[0-9]*"))
    python = [p for p in python if p.name.replace("python3.", "").isdigit()]
    if not python:
        raise BackendError(f"no usr/bin/python3.N under {root}")
    argv = [str(lib / "ld-linux-x86-64.so.2"), "--library-path", f"{lib}:{lib}/blas:{lib}/lapack", str(python[-1])]
    return argv, {"PYTHONHOME": str(root / "usr")}


def _build(work: Path, cache: Path, step: vp.Steps) -> dict:
    for tool in ("apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            raise BackendError(f"{tool} is needed (a Debian/Ubuntu host) to fetch Debian's onnxruntime")
    if not KEYRING.is_file():
        raise BackendError(f"{KEYRING} is missing: apt-get install debian-archive-keyring")
    apt = PrivateApt(cache / f"apt-{SUITE}-amd64", host_mirror(), SUITE, "amd64")
    apt.update_once(f"{SUITE} amd64", step)
    names = apt.debs("install", *PACKAGES, what=f"resolving {' '.join(PACKAGES)} in Debian {SUITE}")
    archives = apt.folder / "archives"
    if not names:
        raise BackendError(f"apt resolved no packages for {PACKAGES}; delete {apt.folder} and re-run")
    missing = [n for n in names if not (archives / n).is_file()]
    if missing:
        step(f"downloading {len(missing)} of {len(names)} debs")
        apt("install", "--download-only", *PACKAGES, what=f"downloading {' '.join(PACKAGES)} and its dependencies")
    else:
        step(f"all {len(names)} debs cached")
    root = work / "root"
    root.mkdir()
    step(f"unpacking {len(names)} debs into {root.name}/")
    for name in names:
        vp.run(["dpkg-deb", "-x", str(archives / name), str(root)], f"unpacking {name}")
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale"):
        shutil.rmtree(root / junk, ignore_errors=True)
    step("checking: the unpacked python imports onnxruntime and offers XnnpackExecutionProvider")
    argv, env = command(root)
    seen = vp.check_python(argv, CHECK, "running the unpacked python3 + onnxruntime",
                           env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", **env})
    if "XnnpackExecutionProvider" not in seen["providers"]:
        raise BackendError(f"Debian {SUITE}'s onnxruntime offers no XnnpackExecutionProvider: {seen}")
    deb = next(n for n in names if n.startswith("python3-onnxruntime_"))
    return {**seen, "deb": deb, "suite": SUITE}


def provision(root: Path, force: bool = False, step: vp.Steps | None = None) -> dict:
    return vp.provision(root, {"suite": SUITE}, _build, step or vp.Steps("xnnpack"), force)


def main(argv: list[str] | None = None) -> int:
    return vp.main("xnnpack", __doc__.split("\n")[0], VARIABLE, DEFAULT_ROOT,
                   lambda root, force, step: provision(root, force, step), argv)


if __name__ == "__main__":
    sys.exit(main())
