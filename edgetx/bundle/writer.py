"""Writing a bundle atomically: build it in a temporary folder beside the target and rename it into
place, so an interrupted build leaves no half-written bundle (and the next build cleans up after it)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgetx.bundle.files import MANIFEST, check_relative, sha256_file, to_json
from edgetx.bundle.manifest import SCHEMA_VERSION, Manifest
from edgetx.errors import BundleError



class BundleWriter:
    """Builds a bundle in a temporary folder beside `target`; `commit()` moves it into place.

    Used as a context manager: leaving the block without `commit()` (an error, Ctrl-C)
    removes the temporary folder, so no half-written bundle is ever at `target`.
    """

    def __init__(self, target: str | os.PathLike, overwrite: bool = False):
        self.target = Path(target).absolute()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        _recover_abandoned(self.target)  # first: it may put back a bundle a killed build had moved aside
        if self.target.exists() and not overwrite:
            raise BundleError(f"{self.target} already exists; pass --force (overwrite=True) to replace it")
        self.overwrite = overwrite
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.{os.getpid()}.", suffix=".partial",
                                         dir=self.target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it 0700: apps of other users must read bundles

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, rel: str) -> Path:
        """Where to write `rel` inside the bundle being built (parents created)."""
        path = check_relative(self.tmp, rel, "writer")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_arrays(self, rel: str, arrays: dict[str, np.ndarray]) -> Path:
        path = self.path(rel)
        np.savez(path, **arrays)
        return path

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Hash every file, write the manifest last, then rename the folder into place."""
        files = {}
        for path in sorted(p for p in self.tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(self.tmp).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest = {"schema_version": SCHEMA_VERSION, **manifest, "files": files}
        for name, variant in manifest.get("variants", {}).items():
            if variant.get("file") not in files:
                raise BundleError(f"variant {name!r}: its file {variant.get('file')!r} was not written")
            variant.update(files[variant["file"]])  # each variant states its own sha256 and size too
        manifest = Manifest.checked(json.loads(to_json(manifest)), self.target / MANIFEST)  # never write a bad one
        tmp_manifest = self.tmp / (MANIFEST + ".tmp")
        tmp_manifest.write_text(to_json(manifest) + "\n")
        os.replace(tmp_manifest, self.tmp / MANIFEST)
        _fsync_tree(self.tmp)
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)
        return self.target



def _recover_abandoned(target: Path) -> None:
    """Clean up after builds of `target` whose process is gone (killed): delete their temporary
    folders, and if one died between moving the old bundle aside and moving its own into place
    (so that nothing is at `target`), move the old bundle back."""
    prefix = f".{target.name}."
    for leftover in sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix)):
        rest = leftover.name[len(prefix):]
        if rest.startswith("old-"):
            pid = rest[len("old-"):]
        elif rest.endswith(".partial"):
            pid = rest.split(".", 1)[0]
        else:
            continue
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if rest.startswith("old-") and not target.exists():
            os.replace(leftover, target)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(root: Path) -> None:
    """Flush file contents before the rename makes the bundle visible."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
