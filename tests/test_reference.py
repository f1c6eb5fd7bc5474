"""The trained reference checkpoint: its size, its quality, and its bundle end to end."""

import json

import pytest

from conftest import run_python
from edgetx.bundle import Bundle
from edgetx.models.train import DEFAULT_CHECKPOINT, load_checkpoint
from edgetx.parity import verify

LOG = json.loads((DEFAULT_CHECKPOINT / "train_log.json").read_text())


def test_checkpoint_size_and_quality():
    model = load_checkpoint()
    assert 2e6 <= model.num_parameters() <= 6e6
    assert LOG["parameters"] == model.num_parameters()
    assert LOG["val_bits_per_byte"] < 3.0 < LOG["untrained_val_bits_per_byte"]


def test_model_card_states_the_measured_figures():
    card = (DEFAULT_CHECKPOINT.parent / "README.md").read_text()
    assert f"{LOG['val_bits_per_byte']:.3f}" in card
    assert f"{LOG['train_seconds'] / 60:.1f} min" in card


@pytest.fixture(scope="module")
def reference_bundle(tmp_path_factory):
    from edgetx.build import build

    return build(None, tmp_path_factory.mktemp("ref") / "edgetx-gpt")


@pytest.mark.slow
def test_reference_bundle_parity(reference_bundle):
    (report,) = verify(Bundle.load(reference_bundle.path))
    assert report.passed, report.to_dict()
    assert report.max_abs < 1e-3
    greedy = next(c for c in report.checks if c.name == "greedy decode")
    assert "24 steps, all tokens identical" in greedy.detail


@pytest.mark.slow
def test_reference_bundle_generates_python_without_torch(reference_bundle):
    code = f"""
import sys; sys.modules['torch'] = None
from edgetx.runtimes import GenerationConfig, Generator, Session
print(Generator(Session({str(reference_bundle.path)!r})).generate("import os\\nimport sys\\n\\n\\ndef main(", GenerationConfig(max_new_tokens=60)))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert ")" in text and ":" in text  # a trained model closes the call and starts a block
