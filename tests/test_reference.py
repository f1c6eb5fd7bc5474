"""The trained reference checkpoint: its size, its quality, and its bundle end to end."""

import json

import pytest

from conftest import run_python
from edgetx.bundle import Bundle
from edgetx.models.train import DEFAULT_CHECKPOINT, load_checkpoint
from edgetx.verify.parity import verify

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


@pytest.mark.slow
def test_reference_bundle_parity(reference_bundle):
    reports = verify(Bundle.load(reference_bundle.path))
    assert [r.variant for r in reports] == ["fp32", "int8-weight-only-a8", "int4"] and all(r.passed for r in reports)
    report = reports[0]
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


TWO_BIT = {"bits": 2, "block_size": 32, "symmetric": False, "algorithm": "rtn", "accuracy_level": 0}


@pytest.mark.slow
def test_a_scheme_that_misses_its_gate_is_not_written(reference_bundle, tmp_path):
    import numpy as np

    from edgetx.quant.gates import quantize_gated
    from edgetx.quant.schemes import Scheme

    data = dict(np.load(reference_bundle.file("quant.npz")))
    bad = Scheme("two-bit", "int8", "weight-only", TWO_BIT)  # 2-bit weights held to the int8 gate
    out = tmp_path / "bad.onnx"
    result = quantize_gated(bad, reference_bundle.file("fp32/model.onnx"), out, "causal-lm",
                            reference_bundle.io["inputs"], data, mixed_precision=False)
    assert not result.passed and not out.exists()
    assert result.missed_by[0].startswith("mean KL") and "(by " in result.missed_by[0]


@pytest.mark.slow
def test_mixed_precision_keeps_the_most_damaging_nodes_in_fp32(reference_bundle, tmp_path):
    import numpy as np

    from edgetx.quant.gates import quantize_gated
    from edgetx.quant.schemes import Scheme

    data = dict(np.load(reference_bundle.file("quant.npz")))
    harsh = Scheme("two-bit", "int4", "weight-only", TWO_BIT)  # misses the int4 gate (KL <= 0.05) alone
    out = tmp_path / "mixed.onnx"
    result = quantize_gated(harsh, reference_bundle.file("fp32/model.onnx"), out, "causal-lm",
                            reference_bundle.io["inputs"], data)
    first, last = result.steps[0], result.steps[-1]
    assert first["missed_by"] and first["sensitivity"].startswith("exact")
    assert result.passed and 0 < len(result.kept_fp32) < result.quantizable and out.is_file()
    assert last["kld_mean"] <= 0.05 < first["kld_mean"] and last["bytes"] > first["bytes"]


@pytest.mark.slow
def test_reference_variants_report_bits_per_byte(reference_bundle):
    results = reference_bundle.manifest["quantization"]["results"]
    for name in ("int8-weight-only-a8", "int4"):
        gate = results[name]["gate"]
        assert results[name]["gate_passed"] and name in reference_bundle.variants
        assert abs(gate["bits_per_token"] - gate["bits_per_token_fp32"]) < 0.05
        assert gate["bits_per_token_fp32"] < 2.0  # the trained model on held-out code
