"""Provision the "native" toolchain: what runtimes/native/ (the C verifier and bench) compiles and links against.

    edgetx provision native [--root DIR] [--force]     # or: make provision-native

Into ROOT/env (default ~/.cache/edgetx/native/env), with no root rights and the host's apt state untouched:
- include/onnxruntime/: onnxruntime's C API headers from Debian trixie's `libonnxruntime-dev` (1.21). Only the
  headers are taken: the C API is versioned, and a newer runtime library serves an older header;
- {x86_64,aarch64}/lib/libonnxruntime.so.1: onnxruntime 1.31.1's own Linux builds (glibc >= 2.28, self-contained)
  out of npm's `onnxruntime-node` package, fetched with `npm pack`;
- {x86_64,aarch64}/: cJSON (`libcjson1`, `libcjson-dev`) and, for aarch64, zlib (`zlib1g`, `zlib1g-dev`) from
  Debian bookworm's amd64 / arm64 debs, fetched with a private apt state (edgetx.runtimes.install.PrivateApt).
Downloads are cached in ROOT/cache, so a re-run downloads nothing. The compilers are the host's: gcc and
Debian's gcc-aarch64-linux-gnu (`make native-tools` installs the latter; that needs root).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

from edgetx import progress
from edgetx.errors import BackendError
from edgetx.runtimes import install

ORT_NODE = "1.31.1"  # onnxruntime-node: its tarball carries libonnxruntime.so.1 for linux x64 and arm64
HEADERS_SUITE = "trixie"  # libonnxruntime-dev 1.21 (bookworm has none)
LIBS_SUITE = "bookworm"  # cJSON and zlib: the oldest glibc the binaries then need is bookworm's
ARCHES = {"x86_64": ("amd64", "x64"), "aarch64": ("arm64", "arm64")}  # ours: (Debian's, Node's)
DEBS = {"x86_64": ["libcjson1", "libcjson-dev"], "aarch64": ["libcjson1", "libcjson-dev", "zlib1g", "zlib1g-dev"]}


def download_debs(cache: Path, mirror: str, suite: str, arch: str, packages: list[str], say: install.Say) -> list[Path]:
    """`packages` themselves (no dependency closure: the rest comes from the host or the device) as cached debs."""
    folder = cache / f"debs-{suite}-{arch}"
    folder.mkdir(parents=True, exist_ok=True)
    found = {p: sorted(folder.glob(f"{p}_*_{arch}.deb")) for p in packages}
    missing = [p for p, debs in found.items() if not debs]
    if missing:
        apt = install.PrivateApt(cache / f"apt-{suite}-{arch}", mirror, suite, arch, say)
        apt.update_once()
        with progress.stage(f"downloading {' '.join(missing)} ({suite} {arch})"):
            apt("download", *missing, what=f"downloading {' '.join(missing)} from Debian {suite} {arch}", cwd=folder)
        found = {p: sorted(folder.glob(f"{p}_*_{arch}.deb")) for p in packages}
        if not all(found.values()):
            raise BackendError(f"apt-get download left no deb of {[p for p, d in found.items() if not d]} in {folder}")
    else:
        say(f"{suite} {arch} debs cached ({', '.join(packages)})")
    return [debs[-1] for debs in found.values()]


def fetch_ort_node(cache: Path, say: install.Say) -> Path:
    """npm's onnxruntime-node tarball (`npm pack`, ~115 MB), cached."""
    folder = cache / "npm-pack"
    tarball = folder / f"onnxruntime-node-{ORT_NODE}.tgz"
    if tarball.is_file():
        say(f"{tarball.name} cached")
        return tarball
    npm = shutil.which("npm")
    if npm is None:
        raise BackendError("npm is needed to fetch onnxruntime-node's libraries: apt-get install npm (or Node.js with "
                           "npm) and run this again")
    folder.mkdir(parents=True, exist_ok=True)
    with progress.stage(f"npm pack onnxruntime-node@{ORT_NODE} (~115 MB)"):
        install.run([npm, "pack", f"onnxruntime-node@{ORT_NODE}", "--pack-destination", str(folder),
                     "--cache", str(cache / "npm")], f"npm pack onnxruntime-node@{ORT_NODE} (is the npm registry reachable?)")
    if not tarball.is_file():
        raise BackendError(f"npm pack left no {tarball.name} in {folder}")
    return tarball


def extract_ort_libraries(tarball: Path, work: Path) -> None:
    """package/bin/napi-v6/linux/{x64,arm64}/libonnxruntime.so.1 into work/{x86_64,aarch64}/lib/."""
    wanted = {f"package/bin/napi-v6/linux/{node}/libonnxruntime.so.1": work / ours / "lib" / "libonnxruntime.so.1"
              for ours, (_, node) in ARCHES.items()}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            target = wanted.get(member.name)
            if target is not None and member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    missing = [name for name, target in wanted.items() if not target.is_file()]
    if missing:
        raise BackendError(f"{tarball} holds no {', '.join(missing)}; delete it and re-run to download it again")


def unpack_headers(deb: Path, work: Path) -> str:
    """usr/include/onnxruntime/*.h of libonnxruntime-dev into work/include/onnxruntime; the headers' ORT_API_VERSION."""
    scratch = work / ".headers-deb"
    install.run(["dpkg-deb", "-x", str(deb), str(scratch)], f"unpacking {deb.name}")
    found = list(scratch.rglob("onnxruntime_c_api.h"))
    if not found:
        raise BackendError(f"{deb.name} holds no onnxruntime_c_api.h")
    shutil.copytree(found[0].parent, work / "include" / "onnxruntime")
    shutil.rmtree(scratch)
    for line in (work / "include/onnxruntime/onnxruntime_c_api.h").read_text().splitlines():
        if line.startswith("#define ORT_API_VERSION"):
            return line.split()[-1]
    raise BackendError(f"{deb.name}: onnxruntime_c_api.h defines no ORT_API_VERSION")


def unpack_libraries(debs: list[Path], target: Path, say: install.Say) -> None:
    """The debs' headers and libraries flattened to target/include and target/lib (no multiarch folders)."""
    scratch = target / ".debs"
    install.unpack_debs(debs, scratch, say)
    (target / "lib").mkdir(parents=True, exist_ok=True)
    (target / "include").mkdir(parents=True, exist_ok=True)
    for lib in [*(scratch / "usr/lib").rglob("*"), *(scratch / "lib").rglob("*")]:  # zlib1g is in /lib
        if lib.is_file() or lib.is_symlink():
            link = lib.readlink() if lib.is_symlink() else None
            dest = target / "lib" / lib.name
            if link is not None:
                dest.symlink_to(link.name)
            else:
                shutil.copy2(lib, dest)
    shutil.copytree(scratch / "usr/include", target / "include", dirs_exist_ok=True)
    shutil.rmtree(scratch)


def _build(work: Path, cache: Path, say: install.Say) -> dict:
    install.need_debian_tools()
    mirror = install.host_mirror()
    headers = download_debs(cache, mirror, HEADERS_SUITE, "amd64", ["libonnxruntime-dev"], say)[0]
    api_version = unpack_headers(headers, work)
    for ours, (debian, _) in ARCHES.items():
        unpack_libraries(download_debs(cache, mirror, LIBS_SUITE, debian, DEBS[ours], say), work / ours, say)
    extract_ort_libraries(fetch_ort_node(cache, say), work)
    for ours in ARCHES:  # what a build links against must be there
        for name in ("libonnxruntime.so.1", "libcjson.so.1", "libcjson.so"):
            if not (work / ours / "lib" / name).exists():
                raise BackendError(f"the native toolchain has no {ours}/lib/{name} after unpacking")
    version = headers.name.split("_")[1].replace("%3a", ":")
    return {"onnxruntime_headers": version, "ort_api_version": api_version}


def provision(root: Path, force: bool = False) -> dict:
    """ROOT/env with the native toolchain's headers and libraries (idempotent); its stamp."""
    wanted = {"onnxruntime_library": ORT_NODE, "libraries": json.dumps(DEBS, sort_keys=True)}
    return install.provision(root, wanted, _build, "native", force)

