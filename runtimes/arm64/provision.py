"""Install the "arm64" environment: an aarch64 CPython + onnxruntime sysroot and QEMU 10 to run it.

    edgetx provision arm64 [--root DIR] [--force]     # or: make provision-arm64

No root, no binfmt, no chroot, and the host's apt state is never touched: apt-get runs with a private
configuration (edgetx.runtimes.install.PrivateApt) to fetch Debian bookworm arm64 debs of python3.11
(unpacked with dpkg -x) and Debian trixie's static qemu-aarch64 (bookworm's QEMU 7.2 crashes on
`import onnxruntime`). The aarch64 onnxruntime and numpy wheels come from PyPI through this Python's pip,
pinned to this host's versions so both sides run the same onnxruntime. The shared installer framework
caches the downloads and builds, checks, stamps and renames the environment.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from edgetx import progress
from edgetx.errors import BackendError
from edgetx.runtimes import install
from edgetx.runtimes.arm64 import DEFAULT_CPU, PYTHON, QEMU

SYSROOT_PACKAGES = ["python3.11", "libstdc++6", "libgomp1"]  # libgomp/libstdc++: onnxruntime's native deps
PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)] + ["manylinux2014_aarch64"]
# bookworm has glibc 2.36 and CPython 3.11: wheels for that, and nothing to build from source.
WHEEL_FLAGS = ("--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               *[arg for p in PLATFORMS for arg in ("--platform", p)])


def _deb_version(filename: str) -> str:
    """The version in a .deb file name (name_version_arch.deb, ':' escaped as %3a)."""
    return filename.split("_")[1].replace("%3a", ":")


def fetch_qemu_deb(cache: Path, mirror: str, say: install.Say) -> Path:
    """trixie's amd64 qemu-user (QEMU 10, statically linked), as a cached .deb file."""
    folder = cache / "qemu-debs"
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob("qemu-user_*_amd64.deb"))
    if found:
        say(f"qemu-user {_deb_version(found[-1].name)} deb cached")
        return found[-1]
    apt = install.PrivateApt(cache / "apt-trixie-amd64", mirror, "trixie", "amd64", say)
    apt.update_once()
    with progress.stage("downloading trixie's qemu-user"):
        apt("download", "qemu-user", what="downloading qemu-user from Debian trixie", cwd=folder)
    found = sorted(folder.glob("qemu-user_*_amd64.deb"))
    if not found:
        raise BackendError(f"apt-get download qemu-user left no qemu-user_*_amd64.deb in {folder}")
    return found[-1]


def extract_qemu(deb: Path, target: Path) -> None:
    """Copy only usr/bin/qemu-aarch64 out of the qemu-user deb (the package holds every target)."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
        for member in tar:
            if member.name.lstrip("./") == "usr/bin/qemu-aarch64" and member.isfile():
                target.write_bytes(tar.extractfile(member).read())
                target.chmod(0o755)
                break
    proc.kill()  # the rest of the archive is not needed
    proc.wait()
    if not target.is_file():
        raise BackendError(f"{deb} holds no usr/bin/qemu-aarch64; delete it and re-run to download it again")


def check_environment(env: Path) -> dict:
    """Run the new environment once under QEMU; return what it reports (python, numpy, onnxruntime)."""
    code = ("import json, platform, numpy, onnxruntime; print(json.dumps({'machine': platform.machine(), "
            "'python': platform.python_version(), 'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__}))")
    sysroot = env / "sysroot"
    return install.check_python([str(env / QEMU), "-L", str(sysroot), str(env / PYTHON)], code,
                                "running python3.11 + onnxruntime under qemu-aarch64",
                                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(sysroot / "site"),
                                     "QEMU_CPU": DEFAULT_CPU, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"})


def host_version(package: str) -> str:
    """The version of `package` in this Python: the sysroot gets the same one."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise BackendError(f"{package} is not installed in {sys.executable}; install it first") from None


def _build(pins: list[str]):
    def build(work: Path, cache: Path, say: install.Say) -> dict:
        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            raise BackendError(f"provisioning arm64 needs an x86-64 Linux host (this is {platform.system()} "
                               f"{platform.machine()})")
        install.need_debian_tools()
        mirror = install.host_mirror()
        say(f"provisioning {', '.join(pins)} (Debian mirror {mirror})")
        debs = install.PrivateApt(cache / "apt-bookworm-arm64", mirror, "bookworm", "arm64", say).fetch_debs(SYSROOT_PACKAGES)
        qemu_deb = fetch_qemu_deb(cache, mirror, say)
        wheels = install.fetch_wheels(cache, pins, say, WHEEL_FLAGS, hint=" (aarch64 cp311 wheels: does PyPI have them?)")
        sysroot = work / "sysroot"
        install.unpack_debs(debs, sysroot, say)
        (work / "bin").mkdir()
        extract_qemu(qemu_deb, work / QEMU)
        say("installing the wheels into sysroot/site")
        install.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                     "--find-links", str(wheels), "--target", str(sysroot / "site"), "--only-binary=:all:",
                     *WHEEL_FLAGS, *pins], "pip install --target sysroot/site")
        with progress.stage(f"checking: python3.11 + onnxruntime under qemu-aarch64 (cpu {DEFAULT_CPU})"):
            seen = check_environment(work)
        want = dict(pin.split("==") for pin in pins)
        if seen["machine"] != "aarch64" or any(seen[name] != version for name, version in want.items()):
            raise BackendError(f"the new environment reports {seen}, expected aarch64 with {', '.join(pins)}")
        return {**seen, "qemu": _deb_version(qemu_deb.name)}

    return build


def provision(root: Path, force: bool = False) -> dict:
    """ROOT/env for the arm64 backends (idempotent); its stamp."""
    wanted = {"onnxruntime": host_version("onnxruntime"), "numpy": host_version("numpy")}
    return install.provision(root, wanted, _build([f"{k}=={v}" for k, v in wanted.items()]), "arm64", force)
