"""Sliding-window attention, logit soft-capping and q/k-norm past the window: a tiny window (8) with golden
prompts far longer than it. The bundle's golden answers come from the model's own forward through edgetx's
full-history cache (and the ONNX graph reproduces them: the build's parity); here they must also equal the
model's plain no-cache forward over the whole sequence, with eager attention (the reference math)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

WINDOW = 8
WINDOWED = {
    "mistral": {"sliding_window": WINDOW},
    "qwen2": {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
    # soft caps small enough that they change the scores of a random-init model
    "gemma2": {"sliding_window": WINDOW, "attn_logit_softcapping": 1.0, "final_logit_softcapping": 2.0},
    "gemma3_text": {"sliding_window": WINDOW},  # q/k RMSNorm, local + global rope
    "cohere2": {"sliding_window": WINDOW},
}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(WINDOWED))
def test_window_is_exact_past_the_window(model_type, tmp_path):
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoModelForCausalLM

    from edgetx.bundle import Bundle

    if (model_type, "causal-lm") not in coverage.cells(["causal-lm"], [model_type]):
        pytest.skip(f"{model_type} is not in this transformers")
    result = coverage.run_cell(model_type, "causal-lm", "fast", tmp_path, WINDOWED[model_type])
    assert result["build"] == "ok", result["reason"]
    golden = Bundle.load(tmp_path / "bundle").golden()
    prompt = golden["prefill.input_ids"]
    assert prompt.shape[1] > 4 * WINDOW
    sequence = torch.tensor(np.concatenate([prompt, golden["decode.tokens"][None]], axis=1))

    def no_cache_logits(**config):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager", **config).eval()
        with torch.no_grad():
            return model(input_ids=sequence, use_cache=False).logits[0].numpy()

    want = no_cache_logits()
    S = prompt.shape[1]
    np.testing.assert_allclose(golden["prefill.logits"][0], want[:S], atol=2e-5, rtol=0)
    np.testing.assert_allclose(golden["decode.logits"], want[S:], atol=2e-5, rtol=0)
    # the window matters here: the same model without it answers differently
    unwindowed = no_cache_logits(sliding_window=10_000)
    assert np.abs(unwindowed[S:] - want[S:]).max() > 1e-3
