"""Real text for golden I/O, available offline on every machine: English sentences from the
standard library's docstrings, and held-out source code (see edgetx.models.data)."""

from __future__ import annotations

import ast
import re

from edgetx.models.data import is_validation, stdlib_dir, stdlib_sources

_SENTENCE_END = re.compile(r"(?<=[a-z][.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Z][A-Za-z ,;'\-]+[a-z][.!?]$")


def docstring_sentences(count: int, min_words: int = 6, max_words: int = 30) -> list[str]:
    """`count` distinct prose sentences from docstrings of the held-out modules (then the rest
    of the stdlib if needed), in a stable order."""
    root = stdlib_dir()
    sources = stdlib_sources(root)
    ordered = [p for p in sources if is_validation(p, root)] + [p for p in sources if not is_validation(p, root)]
    seen: set[str] = set()
    out: list[str] = []
    for path in ordered:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node) or ""
            for paragraph in doc.split("\n\n"):
                for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
                    words = len(sentence.split())
                    if min_words <= words <= max_words and _PROSE.match(sentence) and sentence not in seen:
                        seen.add(sentence)
                        out.append(sentence)
                        if len(out) == count:
                            return out
    if len(out) < count:
        raise RuntimeError(f"found only {len(out)} docstring sentences in {root} (wanted {count})")
    return out


