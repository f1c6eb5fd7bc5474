"""Shared fixtures: a tiny random-init checkpoint and bundles built from it (made here, not downloaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The longest test files start first, so that with `pytest -n 2 --dist loadfile` (make test) neither worker is
# left with a long file at the end: measured seconds on 2 cores, most first.
LONGEST_FIRST = ("test_real_models.py", "test_big_models.py", "test_speech.py", "test_coverage.py", "test_seq2seq.py",
                 "test_gguf_types.py", "test_hf_encoders.py", "test_hf.py", "test_reference.py", "test_vision.py",
                 "test_sliding_window.py", "test_whisper_convert.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order within a rank


def tiny_config():
    from edgetx.models.model import GPTConfig

    return GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=256)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer GPT with random weights, saved like a trained checkpoint."""
    import torch
    from safetensors.torch import save_model

    from edgetx.models.model import GPT

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-checkpoint")
    model = GPT(tiny_config())
    model.config.save(path / "config.json")
    save_model(model, str(path / "model.safetensors"))
    return path


@pytest.fixture(scope="session")
def tiny_bundle_master(tiny_checkpoint, tmp_path_factory) -> Path:
    from edgetx.build import build

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    build(tiny_checkpoint, out)
    return out


@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory):
    """The reference GPT's bundle with the default recipe, as `make demo` builds it (read-only: copy it to damage it)."""
    from edgetx.build import build

    return build(None, tmp_path_factory.mktemp("ref") / "edgetx-gpt")


@pytest.fixture
def tiny_bundle(tiny_bundle_master, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may damage."""
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_bundle_master, copy)
    return copy


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter of this environment (e.g. with torch blocked)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, **kwargs)


def backend_or_skip(name: str):
    """The named backend if it can run here; else skip with its reason, or fail when the run requires
    it (`make test` sets EDGETX_REQUIRE_BACKENDS after provisioning them; CI sets CI)."""
    from edgetx.runtimes import list_backends

    backend = list_backends()[name]
    status = backend.availability()
    if not status.available:
        message = f"{name} backend unavailable: {status.reason}"
        required = os.environ.get("EDGETX_REQUIRE_BACKENDS", "").split(",")
        if os.environ.get("CI") or name in required:
            pytest.fail(message)
        pytest.skip(message)
    return backend
