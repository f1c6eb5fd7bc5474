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
def test_reference_bundle_predicts_held_out_text_without_torch(reference_bundle):
    """With torch blocked: the bundle's own logits on held-out code give a trained model's
    bits/byte (untrained: ~8), and generation streams text."""
    code = f"""
import sys; sys.modules['torch'] = None
import numpy as np
from edgetx.runtimes import GenerationConfig, Generator, Session
session = Session({str(reference_bundle.path)!r})
ids = session.bundle.golden()["prefill.input_ids"]
empty = {{s["name"]: np.zeros((1, s["shape"][1], 0, s["shape"][3]), np.float32)
          for s in session.inputs if s["name"].startswith("past_key_values.")}}
logits = session.run({{"input_ids": ids, "attention_mask": np.ones_like(ids),
                      "position_ids": np.arange(ids.shape[1])[None], **empty}})["logits"][0, :-1]
logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
print(-logp[np.arange(len(logp)), ids[0, 1:]].mean() / np.log(2))
print(len(Generator(session).generate("import os\\n", GenerationConfig(max_new_tokens=40))))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    bits_per_byte, generated = result.stdout.split()
    assert float(bits_per_byte) < 3.0
    assert int(generated) > 0
