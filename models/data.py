"""The training corpus: the standard library's own `.py` sources, as bytes.

Every Python install has them, so the corpus needs no download. A fixed set of modules is
held out for validation (and for the golden text a bundle is checked against).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

# Top-level stdlib modules or packages held out of training. Fixed by name so the split is
# the same on every machine; only their text varies slightly between Python versions.
VALIDATION_MODULES = (
    "argparse", "bisect", "csv", "difflib", "fractions", "heapq", "json",
    "shlex", "statistics", "textwrap",
)
# Test suites and third-party code are not "the standard library's own sources".
_SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: Path | None = None) -> list[Path]:
    """Every stdlib `.py` file, in a stable order."""
    root = root or stdlib_dir()
    files = [p for p in root.rglob("*.py") if not _SKIP_PARTS & set(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_validation(path: Path, root: Path | None = None) -> bool:
    top = path.relative_to(root or stdlib_dir()).parts[0]
    return top.removesuffix(".py") in VALIDATION_MODULES


def load_split(split: str, root: Path | None = None) -> np.ndarray:
    """The split ("train" or "val") as one uint8 array; files joined by a blank line."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    root = root or stdlib_dir()
    want_val = split == "val"
    chunks = [p.read_bytes() + b"\n\n" for p in stdlib_sources(root) if is_validation(p, root) == want_val]
    if not chunks:
        raise FileNotFoundError(f"no {split} sources found under {root}")
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def validation_text(n_bytes: int, offset: int = 0, root: Path | None = None) -> bytes:
    """A slice of held-out text that starts at a line boundary (used for golden prompts)."""
    data = load_split("val", root).tobytes()
    start = data.find(b"\n", offset) + 1
    return data[start : start + n_bytes]
