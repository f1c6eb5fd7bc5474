"""Real speech for the audio tests: Debian's espeak-ng speaks a sentence to a 22.05 kHz WAV; and the word error rate."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ESPEAK_RATE = 22050  # what espeak-ng writes


def speak(text: str, path: Path) -> Path:
    """`text` spoken by espeak-ng into the WAV file `path`; skips the test when espeak-ng is absent (fails in CI)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        message = "espeak-ng is not installed (`apt-get install -y espeak-ng`; `make test` installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True, timeout=120)
    return path


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, as word error rates are usually counted."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level Levenshtein distance: substitutions + deletions + insertions (edgetx's own, on the words)."""
    from edgetx.kinds.speech import word_errors as sequence_errors

    return sequence_errors(words(reference), words(hypothesis))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word errors per reference word."""
    return word_errors(reference, hypothesis) / max(1, len(words(reference)))
