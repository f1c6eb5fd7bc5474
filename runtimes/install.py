"""Installing a backend's environment: what every installer (runtimes/<backend>/provision.py) is built from.

`provision(root, wanted, build, ...)` makes ROOT/env: built in a temporary folder beside it by the
installer's `build(work, cache, say) -> stamp`, checked by running it, stamped last and renamed into place,
under a lock, so an interrupted run never leaves a half environment that looks ready; a stamp that already
has every `wanted` item means there is nothing to do. Downloads are kept in ROOT/cache, so re-provisioning
downloads nothing. No root rights and no host changes: Python stacks are venvs of this interpreter filled
from wheels pip downloaded; Debian stacks use a private apt state (`PrivateApt`). Progress goes through
edgetx.progress. `edgetx provision NAME` runs an installer (edgetx/cli/backends.py).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edgetx import progress
from edgetx.errors import BackendError
from edgetx.runtimes.environment import STAMP, read_stamp

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
Say = Callable[[str], None]


def reporter(label: str) -> Say:
    """Progress lines of one installer: `say("downloading ...")` logs "label: downloading ..."."""
    return lambda message: progress.log.info("%s: %s", label, message)


def run(argv: list[str], what: str, **kwargs) -> str:
    """Run a command; on failure raise with its last lines of output and what it was for."""
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode:
        tail = "\n  ".join((result.stderr.strip() or result.stdout.strip()).splitlines()[-8:])
        raise BackendError(f"{what} failed ({' '.join(argv[:4])} ... exit {result.returncode}):\n  {tail}")
    return result.stdout


def fetch_wheels(cache: Path, pins: list[str], say: Say, flags: tuple[str, ...] = (), hint: str = "") -> Path:
    """Wheels for `pins` (and their dependencies) in cache/wheels; `flags` select another platform."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
           "-d", str(wheels), *flags]
    offline = subprocess.run([*pip, "--no-index", "--find-links", str(wheels), *pins], capture_output=True, text=True)
    if offline.returncode == 0:
        say(f"wheels cached ({', '.join(pins)})")
        return wheels
    with progress.stage(f"downloading wheels: {', '.join(pins)} (and dependencies)"):
        run([*pip, *pins], f"pip download {' '.join(pins)}{hint}")
    return wheels


def make_venv(work: Path, wheels: Path, pins: list[str], say: Say) -> Path:
    """A venv of this interpreter at work/venv with `pins` installed from the cached wheels only."""
    venv = work / "venv"
    say(f"creating a venv and installing {', '.join(pins)} from {wheels}")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], "python -m venv")
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
         "--no-index", "--find-links", str(wheels), *pins], f"pip install {' '.join(pins)} into {venv}")
    return python


def provision_venv(root: Path, force: bool, label: str, pins: list[str], check: str, what: str,
                   accept: Callable[[dict, Path], dict]) -> dict:
    """`provision` of a Python stack: a venv of this interpreter with `pins` (wheels cached in
    cache/wheels), checked by running `check` in it (code that prints one JSON line), which
    `accept(seen, work)` turns into the stamp or refuses with a BackendError. The stamp's wanted items
    are the exact pins."""
    def build(work: Path, cache: Path, say: Say) -> dict:
        python = make_venv(work, fetch_wheels(cache, pins, say), pins, say)
        with progress.stage(f"checking: {what}"):
            seen = check_python([str(python)], check, what)
        return accept({**seen, "python": "venv/bin/python"}, work)

    wanted = dict(pin.split("==") for pin in pins if "==" in pin)
    return provision(root, wanted, build, label, force)


def check_python(argv: list[str], code: str, what: str, env: dict | None = None) -> dict:
    """Run `code` with the environment's Python (argv); it prints one JSON line, returned."""
    out = run([*argv, "-c", code], what, env=env or {"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1",
                                                         "PYTHONDONTWRITEBYTECODE": "1"})
    return json.loads(out.strip().splitlines()[-1])


def host_mirror() -> str:
    """The first Debian (non-security) mirror in the host's apt sources, else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.suffix not in (".list", ".sources", "") or not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            for word in line.split("#")[0].replace("URIs:", " ").split():
                if word.startswith(("http://", "https://")) and "/debian" in word and "security" not in word:
                    return word.rstrip("/")
    return DEBIAN_MIRROR


def need_debian_tools() -> None:
    """One-line errors for hosts that cannot fetch and unpack Debian packages."""
    for tool in ("apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            raise BackendError(f"{tool} is needed (a Debian/Ubuntu host) to fetch Debian packages")
    if not KEYRING.is_file():
        raise BackendError(f"{KEYRING} is missing: apt-get install debian-archive-keyring")


class PrivateApt:
    """apt-get with its own config, state, cache and sources under `folder` (host apt untouched)."""

    def __init__(self, folder: Path, mirror: str, suite: str, arch: str, say: Say):
        self.folder, self.label, self.say = folder, f"{suite} {arch}", say
        for sub in ("lists/partial", "archives/partial", "etc/apt.conf.d", "etc/sources.list.d",
                    "etc/preferences.d", "etc/trusted.gpg.d"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "status").touch()
        (folder / "etc/sources.list").write_text(f"deb [arch={arch} signed-by={KEYRING}] {mirror} {suite} main\n")
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
        self._updated = False

    def __call__(self, *args: str, what: str, cwd: Path | None = None) -> str:
        env = {**os.environ, "APT_CONFIG": str(self.config), "LC_ALL": "C"}
        return run(["apt-get", "-q", "-y", *args], what, env=env, cwd=cwd)

    def update_once(self) -> None:
        """Fetch the package lists unless already cached (a re-run must not download)."""
        if self._updated or any((self.folder / "lists").glob("*_Packages*")):
            self._updated = True
            return
        source = (self.folder / "etc/sources.list").read_text().strip()
        with progress.stage(f"apt-get update for {self.label} (private state in {self.folder})"):
            self("update", "--error-on=any", what=f"apt-get update for {self.label} ({source})")
        if not any((self.folder / "lists").glob("*_Packages*")):
            raise BackendError(f"apt-get update for {self.label} fetched no package list from {source}")
        self._updated = True

    def fetch_debs(self, packages: list[str]) -> list[Path]:
        """`packages` and their dependency closure as cached .deb files (downloading the missing ones)."""
        self.update_once()
        empty = self.folder / "print-uris"  # debs already cached would not be listed: look at an empty cache
        (empty / "partial").mkdir(parents=True, exist_ok=True)
        out = self("install", *packages, "--print-uris", "-o", f"Dir::Cache::archives={empty}",
                   what=f"resolving {' '.join(packages)} in {self.label}")
        names = [line.split("'")[2].split()[0] for line in out.splitlines() if line.startswith("'")]
        if not names:
            raise BackendError(f"apt resolved no packages for {' '.join(packages)} ({self.label}); delete {self.folder} "
                               "and re-run to refresh the package lists")
        archives = self.folder / "archives"
        missing = [n for n in names if not (archives / n).is_file()]
        if missing:
            with progress.stage(f"downloading {len(missing)} of {len(names)} {self.label} debs"):
                self("install", "--download-only", *packages, what=f"downloading {' '.join(packages)} ({self.label})")
        else:
            self.say(f"all {len(names)} {self.label} debs cached")
        return [archives / n for n in names]


def unpack_debs(debs: list[Path], root: Path, say: Say) -> None:
    """`dpkg-deb -x` every deb into `root`, without their documentation."""
    root.mkdir(parents=True, exist_ok=True)
    say(f"unpacking {len(debs)} debs into {root.name}/")
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale"):
        shutil.rmtree(root / junk, ignore_errors=True)


def provision(root: Path, wanted: dict, build: Callable[[Path, Path, Say], dict], label: str,
              force: bool = False) -> dict:
    """Build ROOT/env with `build(work, cache, say) -> stamp` unless a stamp there already has every
    `wanted` item (idempotent). The stamp is written last; the folder is renamed into place."""
    say = reporter(label)
    root = Path(root).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one provisioning of a root at a time
        stamp = read_stamp(root)
        if stamp and not force and all(stamp.get(k) == v for k, v in wanted.items()):
            say(f"already provisioned: {root / 'env'} ({', '.join(f'{k} {v}' for k, v in wanted.items())}); "
                "nothing to do")
            return stamp
        for stale in root.glob(".env-*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        work, old, final = root / f".env-{os.getpid()}.partial", root / f".env-{os.getpid()}.old.partial", root / "env"
        work.mkdir()
        try:
            stamp = {**build(work, root / "cache", say), **wanted,
                     "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            (work / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")  # last: marks the environment complete
        except BaseException:  # failed or interrupted: leave no partial environment behind
            shutil.rmtree(work, ignore_errors=True)
            raise
        if final.exists():
            final.rename(old)
        work.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        say(f"ready: {final} ({', '.join(f'{k} {v}' for k, v in stamp.items() if k != 'created')})")
        return stamp
