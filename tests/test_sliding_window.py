"""Sliding-window attention is exact past the window (exported and fused), and Gemma 2's soft-capping holds.

Tiny random-init decoders with a window of 8 positions, so the golden prompt (up to 128 tokens) and the
decode steps run far past it: the parity checks then prove the window in every graph candidate.
"""

from __future__ import annotations


import pytest
import torch

from hf_models import VOCAB, byte_level_tokenizer
from edgetx.build import build
from edgetx.exporters.hf_decoder import hf_decoder_forward

WINDOW = 8
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def _config(family: str):
    import transformers as tf

    return {
        "mistral": lambda: tf.MistralConfig(**COMMON, sliding_window=WINDOW),  # every layer windowed
        "qwen2": lambda: tf.Qwen2Config(**COMMON, sliding_window=WINDOW, use_sliding_window=True,
                                        max_window_layers=1),  # layer 0 full, layer 1 windowed
        "gemma2": lambda: tf.Gemma2Config(**COMMON, head_dim=16, sliding_window=WINDOW, attn_logit_softcapping=5.0,
                                          final_logit_softcapping=3.0),  # alternating, soft-capped
        "gemma3": lambda: tf.Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=WINDOW,
                                              query_pre_attn_scalar=16),  # q/k-norm, alternating windows
        # windowed layers with rope, a full-attention layer without it (Cohere 2's interleaving)
        "cohere2": lambda: tf.Cohere2Config(**COMMON, sliding_window=WINDOW,
                                            layer_types=["sliding_attention", "full_attention"]),
    }[family]()


def _model(family: str, attention: str = "sdpa"):
    import transformers as tf

    torch.manual_seed(0)
    config = _config(family)
    config._attn_implementation = "eager" if getattr(config, "attn_logit_softcapping", None) else attention
    return tf.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma2", "gemma3", "cohere2"])
@torch.no_grad()
def test_the_cached_forward_equals_the_models_own_past_the_window(family):
    model = _model(family)
    config = model.config
    ids = torch.randint(0, VOCAB, (1, 4 * WINDOW))
    reference = model(ids).logits  # no cache: the model's own masks over the whole sequence
    forward = hf_decoder_forward(model)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    past = [(torch.zeros(1, config.num_key_value_heads, 0, head_dim),) * 2 for _ in range(config.num_hidden_layers)]
    logits, past = forward(ids[:, :3], torch.ones(1, 3, dtype=torch.long), torch.arange(3)[None], past)
    steps = [logits]
    for t in range(3, ids.shape[1]):
        logits, past = forward(ids[:, t:t + 1], torch.ones(1, t + 1, dtype=torch.long), torch.tensor([[t]]), past)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), reference, atol=1e-5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tokenizer = byte_level_tokenizer()

    def save(family: str):
        folder = tmp_path_factory.mktemp(family)
        model = _model(family)
        model.config.eos_token_id = model.config.bos_token_id = tokenizer.eos_token_id
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return save


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma2"])
def test_fused_attention_keeps_the_window(folders, tmp_path, family):
    bundle = build(folders(family), tmp_path / "bundle", candidates=("unfused", "ort-fusions"), quantize=())
    assert bundle.variant("fp32").parity["passed"]
    candidates = {c["name"]: c for c in bundle.manifest["optimization"]["candidates"]}
    fused = candidates["ort-fusions"]
    gqa = next(step for step in fused["log"] if step["pass"] == "gqa-padded-batches")
    if gqa["modified"]:  # the kernel attends to all it is given: the window must be in its bias
        windowed = sum(1 for w in _windows(family) if w)
        assert gqa["sliding_window_layers"] == windowed
        assert fused["parity_passed"], fused["failed_checks"]  # 128-token prompts, 16x the window
    notes = " ".join(bundle.manifest["provenance"]["export_notes"])
    assert ("soft-capping" in notes) == (family == "gemma2")


def _windows(family: str) -> list:
    from edgetx.exporters.hf_decoder import attention_windows

    return list(attention_windows(_config(family)))
