"""Files of a bundle: the manifest's name, strict JSON, sha256, and paths that must stay inside the folder.
Standard library only: part of the torch-free runtime path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from edgetx.errors import BundleError

MANIFEST = "manifest.json"


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any, indent: int | None = 2) -> str:
    """Strict JSON (no NaN/Infinity, which JavaScript and jq reject): non-finite numbers become null."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_relative(root: Path, rel: str, where: str) -> Path:
    """Resolve a manifest path, refusing anything that would leave the bundle folder."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        raise BundleError(f"{root / MANIFEST}: {where} has path {rel!r}; bundle paths must be relative "
                          "and stay inside the bundle folder")
    path = root / pure
    if not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"{root / MANIFEST}: {where} path {rel!r} resolves outside the bundle "
                          "(a symlink?); refusing to load it")
    return path


