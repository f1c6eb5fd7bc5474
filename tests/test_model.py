"""The reference GPT in PyTorch: the cache, the mask and the training script behave."""

import json

import pytest
import torch

from conftest import tiny_config
from edgetx.models.data import VALIDATION_MODULES, is_validation, stdlib_dir, stdlib_sources
from edgetx.models.model import GPT, attention_bias


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(tiny_config()).eval()


@torch.no_grad()
def test_decode_with_cache_equals_full_pass(model):
    ids = torch.randint(0, 256, (2, 12))
    full, _ = model(ids)
    _, past = model(ids[:, :8], attention_mask=torch.ones(2, 8, dtype=torch.int64))
    steps = []
    for t in range(8, 12):
        logits, past = model(ids[:, t : t + 1], attention_mask=torch.ones(2, t + 1, dtype=torch.int64),
                             position_ids=torch.full((2, 1), t), past=past)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 8:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_left_padding_does_not_change_a_row(model):
    ids = torch.randint(0, 256, (1, 10))
    alone, _ = model(ids, attention_mask=torch.ones(1, 10, dtype=torch.int64))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.int64), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 10)], dim=1).long()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out, _ = model(padded, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(out[:, 5:], alone, atol=1e-5, rtol=1e-5)


def test_attention_bias_is_causal_and_masks_padding():
    bias = attention_bias(torch.tensor([[0, 1, 1, 1]]), query_len=2)
    assert bias.shape == (1, 1, 2, 4)
    allowed = bias[0, 0] == 0
    assert allowed.tolist() == [[False, True, True, False], [False, True, True, True]]


def test_validation_modules_are_held_out_of_training():
    root = stdlib_dir()
    sources = stdlib_sources(root)
    val = [p for p in sources if is_validation(p, root)]
    assert val and len(val) < len(sources) / 10
    assert {p.relative_to(root).parts[0].removesuffix(".py") for p in val} == set(VALIDATION_MODULES)
    assert not any("test" in p.relative_to(root).parts[:-1] for p in sources)


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
    from edgetx.models.train import main

    args = ["--steps", "3", "--eval-every", "2", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
            "--batch-size", "2", "--seq-len", "32"]
    main(args + ["--out", str(tmp_path / "a")])
    main(args + ["--out", str(tmp_path / "b")])
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    log = json.loads((tmp_path / "a/train_log.json").read_text())
    assert log["val_bits_per_byte"] < log["untrained_val_bits_per_byte"]
