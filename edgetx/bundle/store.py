"""The bundle: a folder holding a model's variants, its golden I/O and a manifest.

    bundle/
      manifest.json        schema version, model facts, I/O signature, variants, files + sha256,
                           golden I/O description, provenance, parity results
      fp32/model.onnx      one folder per variant
      golden.npz           PyTorch's answers on held-out text, captured at export

Loading validates the schema, every file's sha256 and the structure of every ONNX file (before
any runtime parses it). Needs only the standard library and numpy: it is part of the torch-free
runtime path.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgetx.bundle.files import MANIFEST, check_relative, sha256_file, to_json
from edgetx.bundle.npz import read_npz
from edgetx.bundle.manifest import SCHEMA_VERSION, Manifest, Variant
from edgetx.bundle.onnx_check import OnnxCheck
from edgetx.errors import BundleError

BUILT_BY_BUILD = ("schema_version", "model", "io", "variants", "files", "golden", "provenance")
__all__ = ["SCHEMA_VERSION", "Bundle", "Variant"]


class Bundle:
    """A loaded, validated bundle. `Bundle.load(path)` checks schema and hashes."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest(manifest)

    @classmethod
    def load(cls, path: str | os.PathLike, verify_hashes: bool = True) -> "Bundle":
        """Load and validate. `verify_hashes=False` skips sha256 checks (a trusted re-load); paths and
        the structure of ONNX files are checked either way.

        A bundle that a build replaces while it is being loaded (its manifest changed meanwhile) is
        loaded again, up to three times, so an app never sees a mix of the old and the new one."""
        root = Path(path)
        for attempt in range(3):
            before = _identity(root / MANIFEST)
            try:
                return cls._load_once(root, verify_hashes)
            except (BundleError, OSError) as e:
                if attempt == 2 or before is None or _identity(root / MANIFEST) == before:
                    if isinstance(e, OSError):
                        raise BundleError(f"{root}: cannot read {e.filename or 'a file'} ({e.strerror}); if a build "
                                          "is replacing this bundle, load it again when it is done") from None
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    @classmethod
    def _load_once(cls, root: Path, verify_hashes: bool) -> "Bundle":
        if not root.is_dir():
            raise BundleError(f"{root}: no such bundle folder (build one with `edgetx build --out {root}`)")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path} is missing: {root} is not a complete edgetx bundle")
        manifest = Manifest.parse(manifest_path.read_bytes(), manifest_path)
        bundle = cls(root, manifest)
        bundle._validate_files(verify_hashes)
        return bundle

    def _validate_files(self, verify_hashes: bool) -> None:
        files = self.manifest["files"]
        for rel, entry in files.items():
            path = check_relative(self.path, rel, f"files[{rel!r}]")
            if not path.is_file():
                raise BundleError(f"{path} is missing (listed in {MANIFEST}); the bundle is incomplete, rebuild it")
            if verify_hashes and sha256_file(path) != entry["sha256"]:
                raise BundleError(f"{path} does not match the sha256 in {MANIFEST}: the file was altered "
                                  "or corrupted after the build; rebuild or re-copy the bundle")
        for name, variant in self.manifest["variants"].items():
            if variant["file"] not in files:
                raise BundleError(f"{self.path / MANIFEST}: variants[{name!r}].file {variant['file']!r} "
                                  "is not listed under 'files' (so its hash cannot be checked)")
            for fmt, rel in (variant.get("formats") or {}).items():
                if rel not in files:
                    raise BundleError(f"{self.path / MANIFEST}: variants[{name!r}].formats[{fmt!r}] {rel!r} "
                                      "is not listed under 'files' (so its hash cannot be checked)")
            expected = set((self.manifest["io"].get("components") or {}))
            for component, rel in (variant.get("components") or {}).items():
                if rel not in files:
                    raise BundleError(f"{self.path / MANIFEST}: variants[{name!r}].components[{component!r}] "
                                      f"{rel!r} is not listed under 'files' (so its hash cannot be checked)")
            for component, formats in (variant.get("component_formats") or {}).items():
                for fmt, rel in formats.items():
                    if rel not in files:
                        raise BundleError(f"{self.path / MANIFEST}: variants[{name!r}].component_formats[{component!r}]"
                                          f"[{fmt!r}] {rel!r} is not listed under 'files' (so its hash cannot be checked)")
            if set(variant.get("components") or {}) != expected:
                raise BundleError(f"{self.path / MANIFEST}: variants[{name!r}] has graphs "
                                  f"{sorted(variant.get('components') or {})} but io.components names {sorted(expected)}")
            if variant.get("sha256", files[variant["file"]]["sha256"]) != files[variant["file"]]["sha256"]:
                raise BundleError(f"{self.path / MANIFEST}: variants[{name!r}].sha256 disagrees with "
                                  f"files[{variant['file']!r}].sha256; the manifest was edited inconsistently")
        golden = self.manifest["golden"].get("file")
        if golden is not None and (not isinstance(golden, str) or golden not in files):
            raise BundleError(f"{self.path / MANIFEST}: golden.file {golden!r} is not listed under 'files'")
        for rel in files:  # after every file is known to exist: external data may name another one
            if rel.endswith(".onnx"):
                OnnxCheck(self.path / rel, self.path, files).run()

    # --- what a bundle holds -------------------------------------------------------------
    @property
    def model(self) -> dict:
        return self.manifest.model

    @property
    def io(self) -> dict:
        return self.manifest.io

    @property
    def variants(self) -> dict[str, Variant]:
        return self.manifest.variants

    def variant(self, name: str) -> Variant:
        variants = self.variants
        if name not in variants:
            raise BundleError(f"{self.path}: no variant {name!r}; this bundle has {', '.join(variants) or 'none'}")
        return variants[name]

    def file(self, rel: str) -> Path:
        return check_relative(self.path, rel, "file")

    def update_manifest(self, key: str, value: Any) -> None:
        """Set one top-level field that describes the bundle without changing its files (e.g. bench
        results), rewriting manifest.json atomically."""
        if key in BUILT_BY_BUILD:
            raise BundleError(f"manifest field {key!r} is written only by a build")
        manifest = Manifest.checked({**self.manifest, key: json.loads(to_json(value))}, self.path / MANIFEST)
        self._write(manifest)

    def add_files(self, new_files: dict[str, Path], edit: Callable[[dict[str, Any]], None]) -> None:
        """Move `new_files` ({bundle-relative path: finished file}) into the bundle, let `edit` change the
        manifest (e.g. name them in a variant), and rewrite manifest.json last and atomically.

        Until the manifest is replaced the new files are unreferenced, so an interruption leaves the
        bundle as it was (plus stray files that the next run overwrites)."""
        manifest = json.loads(json.dumps(self.manifest))
        for rel, source in new_files.items():
            target = check_relative(self.path, rel, "new file")
            target.parent.mkdir(parents=True, exist_ok=True)
            staged = target.with_name(target.name + f".{os.getpid()}.partial")
            shutil.move(str(source), staged)
            os.replace(staged, target)
            manifest["files"][rel] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
        edit(manifest)
        updated = Bundle(self.path, Manifest.checked(manifest, self.path / MANIFEST))
        updated._validate_files(verify_hashes=False)  # the edit must leave a loadable manifest
        self._write(updated.manifest)

    def _write(self, manifest: Manifest) -> None:
        """Replace manifest.json atomically (a checked manifest: its files are already in place)."""
        tmp = self.path / (MANIFEST + f".{os.getpid()}.tmp")
        tmp.write_text(to_json(manifest) + "\n")
        os.replace(tmp, self.path / MANIFEST)
        self.manifest = manifest

    def golden(self) -> dict[str, np.ndarray]:
        """The golden I/O arrays (loaded without pickle)."""
        rel = self.manifest.golden.get("file")
        if rel is None:
            raise BundleError(f"{self.path}: this bundle carries no golden I/O")
        return read_npz(self.file(rel))


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` now (inode, modification time), or None if none is."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns

