"""Install the "xnnpack" environment: Debian trixie's onnxruntime (python3-onnxruntime 1.21, built with the
XNNPACK execution provider, which no PyPI or npm onnxruntime includes), unpacked into a folder with its own
python3.13, numpy and C library, and run through that folder's ld-linux.

    edgetx provision xnnpack [--root DIR] [--force]     # or: make provision-xnnpack

No root rights, and the host's apt state is untouched: apt-get runs with a private state under ROOT/cache
(edgetx.runtimes.install.PrivateApt) to download python3-onnxruntime and its dependency closure (~60 debs,
~50 MB), which `dpkg-deb -x` unpacks into ROOT/env/root.
"""

from __future__ import annotations

from pathlib import Path

from edgetx import progress
from edgetx.errors import BackendError
from edgetx.runtimes import install
from edgetx.runtimes.xnnpack import command

SUITE = "trixie"
PACKAGES = ["python3-onnxruntime"]
CHECK = ("import json, numpy, onnxruntime as ort, platform; "
         "print(json.dumps({'onnxruntime': ort.__version__, 'numpy': numpy.__version__, "
         "'python': platform.python_version(), 'providers': ort.get_available_providers()}))")


def _build(work: Path, cache: Path, say: install.Say) -> dict:
    install.need_debian_tools()
    apt = install.PrivateApt(cache / f"apt-{SUITE}-amd64", install.host_mirror(), SUITE, "amd64", say)
    debs = apt.fetch_debs(PACKAGES)
    install.unpack_debs(debs, work / "root", say)
    argv, env = command(work / "root")
    with progress.stage("checking: the unpacked python imports onnxruntime and offers XnnpackExecutionProvider"):
        seen = install.check_python(argv, CHECK, "running the unpacked python3 + onnxruntime",
                                    env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1",
                                         "PYTHONDONTWRITEBYTECODE": "1", **env})
    if "XnnpackExecutionProvider" not in seen["providers"]:
        raise BackendError(f"Debian {SUITE}'s onnxruntime offers no XnnpackExecutionProvider: {seen}")
    deb = next(d.name for d in debs if d.name.startswith("python3-onnxruntime_"))
    return {**seen, "deb": deb}


def provision(root: Path, force: bool = False) -> dict:
    return install.provision(root, {"suite": SUITE}, _build, "xnnpack", force)
