"""Provision the "arm64" backend: an aarch64 CPython + onnxruntime sysroot and QEMU 10 to run it.

    python -m edgetx.runtimes.arm64_provision [--root DIR]     # or: make provision-arm64

No root, no binfmt, no chroot, and the host's apt state is never touched: apt-get runs with a
private configuration (its own state, cache and source list under ROOT/cache) to fetch Debian
bookworm arm64 debs of python3.11 (unpacked with dpkg -x) and Debian trixie's static
qemu-aarch64 (bookworm's QEMU 7.2 crashes on `import onnxruntime`). The aarch64 onnxruntime
and numpy wheels come from PyPI through this Python's pip, pinned to this host's versions so
both sides run the same onnxruntime. Downloads are cached under ROOT/cache (a re-run downloads
nothing); the environment is built in a temporary folder, checked by running it, stamped and
renamed to ROOT/env, so an interrupted run never leaves a half environment that looks ready.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

from edgetx.errors import BackendError
from edgetx.runtimes.vendor_provision import run

DEFAULT_ROOT = Path("~/.cache/edgetx/arm64")
STAMP = "provisioned.json"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
SYSROOT_PACKAGES = ["python3.11", "libstdc++6", "libgomp1"]  # libgomp/libstdc++: onnxruntime's native deps
PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(36, 16, -1)] + ["manylinux2014_aarch64"]
# bookworm has glibc 2.36 and CPython 3.11: wheels for that, and nothing to build from source.
WHEEL_FLAGS = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               *[arg for p in PLATFORMS for arg in ("--platform", p)]]
_START = time.monotonic()


def default_root() -> Path:
    """ROOT from EDGETX_ARM64_ROOT, else ~/.cache/edgetx/arm64 (shared with the backend)."""
    return Path(os.environ.get("EDGETX_ARM64_ROOT") or DEFAULT_ROOT).expanduser().absolute()


def step(message: str) -> None:
    """One progress line with the time since the start."""
    print(f"[arm64 {time.monotonic() - _START:5.1f}s] {message}", flush=True)


def host_mirror() -> str:
    """The first Debian (non-security) mirror in the host's apt sources, else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.suffix not in (".list", ".sources", "") or not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#")[0].replace("URIs:", " ").split()
            for word in words:
                if word.startswith(("http://", "https://")) and "/debian" in word and "security" not in word:
                    return word.rstrip("/")
    return DEBIAN_MIRROR


class PrivateApt:
    """apt-get with its own config, state, cache and sources under `folder` (host apt untouched)."""

    def __init__(self, folder: Path, mirror: str, suite: str, arch: str):
        self.folder = folder
        for sub in ("lists/partial", "archives/partial", "etc/apt.conf.d", "etc/sources.list.d",
                    "etc/preferences.d", "etc/trusted.gpg.d"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "status").touch()
        (folder / "etc/sources.list").write_text(
            f"deb [arch={arch} signed-by={KEYRING}] {mirror} {suite} main\n")
        settings = {"Dir::State": folder, "Dir::State::Lists": folder / "lists", "Dir::State::status": folder / "status",
                    "Dir::Cache": folder, "Dir::Cache::archives": folder / "archives", "Dir::Etc": folder / "etc",
                    "Dir::Etc::Parts": folder / "etc/apt.conf.d", "Dir::Etc::SourceList": folder / "etc/sources.list",
                    "Dir::Etc::SourceParts": folder / "etc/sources.list.d",
                    "Dir::Etc::Preferences": folder / "etc/preferences",
                    "Dir::Etc::PreferencesParts": folder / "etc/preferences.d",
                    "Dir::Etc::TrustedParts": folder / "etc/trusted.gpg.d", "Dir::Log": folder,
                    "APT::Architecture": arch, "APT::Architectures": arch, "APT::Sandbox::User": "root",
                    "APT::Install-Recommends": "false", "Acquire::Languages": "none",
                    "Acquire::GzipIndexes": "true", "Dir::Cache::pkgcache": "", "Dir::Cache::srcpkgcache": ""}
        # Read via APT_CONFIG before anything else, so the host's apt.conf.d (and its hooks) is never read.
        self.config = folder / "apt.conf"
        self.config.write_text("".join(f'{key} "{value}";\n' for key, value in settings.items()))

    def __call__(self, *args: str, what: str, cwd: Path | None = None) -> str:
        env = {**os.environ, "APT_CONFIG": str(self.config), "LC_ALL": "C"}
        return run(["apt-get", "-q", "-y", *args], what, env=env, cwd=cwd)

    def update_once(self, label: str, report=None) -> None:
        """Fetch the package lists unless already cached (a re-run must not download); progress goes to
        `report` (the caller's own progress lines; default: this module's)."""
        report = report or step
        if any((self.folder / "lists").glob("*_Packages*")):
            report(f"{label}: package lists cached")
            return
        report(f"{label}: apt-get update (private state in {self.folder})")
        source = (self.folder / "etc/sources.list").read_text().strip()
        self("update", "--error-on=any", what=f"apt-get update for {label} ({source})")
        if not any((self.folder / "lists").glob("*_Packages*")):
            raise BackendError(f"apt-get update for {label} fetched no package list from {source}")

    def debs(self, *args: str, what: str) -> list[str]:
        """File names of the debs `apt-get ARGS` needs ('URL' NAME SIZE HASH lines of --print-uris)."""
        empty = self.folder / "print-uris"  # debs already cached would not be listed: look at an empty cache
        (empty / "partial").mkdir(parents=True, exist_ok=True)
        out = self(*args, "--print-uris", "-o", f"Dir::Cache::archives={empty}", what=what)
        return [line.split("'")[2].split()[0] for line in out.splitlines() if line.startswith("'")]


def _deb_version(filename: str) -> str:
    """The version in a .deb file name (name_version_arch.deb, ':' escaped as %3a)."""
    return filename.split("_")[1].replace("%3a", ":")


def fetch_sysroot_debs(cache: Path, mirror: str) -> list[Path]:
    """bookworm arm64 python3.11 and its dependency closure, as cached .deb files."""
    apt = PrivateApt(cache / "apt-bookworm-arm64", mirror, "bookworm", "arm64")
    apt.update_once("bookworm arm64")
    names = apt.debs("install", *SYSROOT_PACKAGES, what="resolving python3.11 for arm64")
    archives = apt.folder / "archives"
    if not names:
        raise BackendError(f"apt resolved no packages for {', '.join(SYSROOT_PACKAGES)} (arm64); "
                           f"delete {apt.folder} and re-run to refresh the package lists")
    missing = [n for n in names if not (archives / n).is_file()]
    if missing:
        step(f"downloading {len(missing)} of {len(names)} arm64 debs")
        apt("install", "--download-only", *SYSROOT_PACKAGES, what="downloading the arm64 python3.11 debs")
    else:
        step(f"all {len(names)} arm64 debs cached")
    return [archives / n for n in names]


def fetch_qemu_deb(cache: Path, mirror: str) -> Path:
    """trixie's amd64 qemu-user (QEMU 10, statically linked), as a cached .deb file."""
    folder = cache / "qemu-debs"
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob("qemu-user_*_amd64.deb"))
    if found:
        step(f"qemu-user {_deb_version(found[-1].name)} deb cached")
        return found[-1]
    apt = PrivateApt(cache / "apt-trixie-amd64", mirror, "trixie", "amd64")
    apt.update_once("trixie amd64")
    step("downloading trixie's qemu-user")
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


def fetch_wheels(cache: Path, pins: list[str]) -> Path:
    """aarch64 cp311 wheels of the pinned packages (and their dependencies) in ROOT/cache/wheels."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    flags = [*WHEEL_FLAGS, "--disable-pip-version-check"]
    pip = [sys.executable, "-m", "pip"]
    offline = subprocess.run([*pip, "download", "-q", "--no-index", "--find-links", str(wheels), "-d", str(wheels),
                              *flags, *pins], capture_output=True, text=True)
    if offline.returncode == 0:
        step(f"wheels cached ({', '.join(pins)})")
    else:
        step(f"downloading aarch64 wheels: {', '.join(pins)} (and dependencies)")
        run([*pip, "download", "-q", "-d", str(wheels), *flags, *pins],
            f"pip download of aarch64 cp311 wheels for {' '.join(pins)} (does PyPI have them? "
            "choose another version with --numpy / --onnxruntime)")
    return wheels


def check_environment(env: Path) -> dict:
    """Run the new environment once under QEMU; return what it reports (python, numpy, onnxruntime)."""
    code = ("import json, platform, numpy, onnxruntime; print(json.dumps({'machine': platform.machine(), "
            "'python': platform.python_version(), 'numpy': numpy.__version__, 'onnxruntime': onnxruntime.__version__}))")
    sysroot = env / "sysroot"
    argv = [str(env / "bin/qemu-aarch64"), "-L", str(sysroot), str(sysroot / "usr/bin/python3.11"), "-c", code]
    out = run(argv, "running python3.11 + onnxruntime under qemu-aarch64",
              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(sysroot / "site"), "QEMU_CPU": "neoverse-n1",
                   "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"})
    return json.loads(out.strip().splitlines()[-1])


def read_stamp(root: Path) -> dict | None:
    """The stamp of a complete environment under `root`, or None."""
    try:
        return json.loads((root / "env" / STAMP).read_text())
    except (OSError, ValueError):
        return None


def host_version(package: str) -> str:
    """The version of `package` in this Python: the sysroot gets the same one."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        raise BackendError(f"{package} is not installed in {sys.executable}; install it, or pass --{package} VERSION")


def check_host() -> None:
    """One-line errors for hosts this recipe cannot serve."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise BackendError(f"provisioning needs an x86-64 Linux host (this is {platform.system()} {platform.machine()})")
    for tool, why in (("apt-get", "apt-get is needed (Debian/Ubuntu host)"), ("dpkg-deb", "dpkg is needed (Debian/Ubuntu host)")):
        if not shutil.which(tool):
            raise BackendError(why)
    if not KEYRING.is_file():
        raise BackendError(f"{KEYRING} is missing: apt-get install debian-archive-keyring")
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        raise BackendError(f"pip is needed in {sys.executable} (python -m ensurepip)")


def _remove_stale(root: Path) -> None:
    """Remove the temporary folders of earlier runs (safe: the caller holds the root's lock)."""
    for stale in root.glob(".env-*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


def build(work: Path, debs: list[Path], qemu_deb: Path, wheels: Path, pins: list[str]) -> dict:
    """Assemble bin/qemu-aarch64 and sysroot/ (with site/) in `work`, run it once, stamp it last."""
    sysroot = work / "sysroot"
    sysroot.mkdir(parents=True)
    (work / "bin").mkdir()
    step(f"unpacking {len(debs)} debs into the sysroot")
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(sysroot)], f"unpacking {deb.name}")
    shutil.rmtree(sysroot / "usr/share/doc", ignore_errors=True)
    shutil.rmtree(sysroot / "usr/share/man", ignore_errors=True)
    extract_qemu(qemu_deb, work / "bin/qemu-aarch64")
    step("installing the wheels into sysroot/site")
    run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
         "--find-links", str(wheels), "--target", str(sysroot / "site"), *WHEEL_FLAGS, *pins],
        "pip install --target sysroot/site")
    step("checking: python3.11 + onnxruntime under qemu-aarch64 (cpu neoverse-n1)")
    seen = check_environment(work)
    want = dict(pin.split("==") for pin in pins)
    if seen["machine"] != "aarch64" or any(seen[name] != version for name, version in want.items()):
        raise BackendError(f"the new environment reports {seen}, expected aarch64 with {', '.join(pins)}")
    stamp = {**seen, "qemu": _deb_version(qemu_deb.name),
             "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    (work / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")  # last: marks the environment complete
    return stamp


def provision(root: Path, onnxruntime: str, numpy: str, force: bool = False) -> dict:
    """Build ROOT/env unless it is there with these versions (idempotent); return its stamp."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one provisioning of a root at a time
        stamp = read_stamp(root)
        if stamp and not force and stamp.get("onnxruntime") == onnxruntime and stamp.get("numpy") == numpy:
            step(f"already provisioned: {root / 'env'} (onnxruntime {onnxruntime}, numpy {numpy}); nothing to do")
            return stamp
        check_host()
        _remove_stale(root)
        cache, mirror, pins = root / "cache", host_mirror(), [f"onnxruntime=={onnxruntime}", f"numpy=={numpy}"]
        step(f"provisioning {root} (onnxruntime {onnxruntime}, numpy {numpy}; Debian mirror {mirror})")
        debs = fetch_sysroot_debs(cache, mirror)
        qemu_deb = fetch_qemu_deb(cache, mirror)
        wheels = fetch_wheels(cache, pins)
        work, old, final = root / f".env-{os.getpid()}.partial", root / f".env-{os.getpid()}.old.partial", root / "env"
        try:
            stamp = build(work, debs, qemu_deb, wheels, pins)
        except BaseException:  # failed or interrupted: leave no partial environment behind
            shutil.rmtree(work, ignore_errors=True)
            raise
        if final.exists():
            final.rename(old)
        work.rename(final)
        _remove_stale(root)  # the old environment, and any folder an orphaned child of a killed run wrote to
        step(f"ready: {final} (python {stamp['python']}, onnxruntime {stamp['onnxruntime']}, "
             f"numpy {stamp['numpy']}, qemu {stamp['qemu']})")
        return stamp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgetx.runtimes.arm64_provision", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help=f"where to put it (default: $EDGETX_ARM64_ROOT or {DEFAULT_ROOT})")
    parser.add_argument("--onnxruntime", default=None, help="onnxruntime version (default: this Python's)")
    parser.add_argument("--numpy", default=None, help="numpy version with aarch64 cp311 wheels (default: this Python's)")
    parser.add_argument("--force", action="store_true", help="rebuild the environment (downloads stay cached)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up (and stop children) on kill too
    root = (args.root.expanduser().absolute() if args.root else default_root())
    try:
        provision(root, args.onnxruntime or host_version("onnxruntime"), args.numpy or host_version("numpy"), args.force)
    except BackendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-built was left behind", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
