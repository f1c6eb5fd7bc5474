"""Hugging Face causal-LM decoders: the model's own forward over a transformers cache passed as flat tensors.

Architecture-specific help is small and named (see `ADJUSTMENTS`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from edgetx.exporters.hf import _load_weights, _special_ids
from edgetx.exporters.source import GOLDEN_DECODE_STEPS, ExportSource, causal_lm_source
from edgetx.exporters.causal_lm import CausalLMSpec
from edgetx.exporters.texts import docstring_sentences

TESTED_DECODER_TYPES = {"llama", "qwen2", "mistral", "gpt2"}


def _attention_soft_capping(config) -> str | None:
    """Gemma 2's attention logit soft-capping (tanh on the scores) exists only in eager attention; sdpa would
    drop it silently (transformers 4) or refuse the model (5)."""
    if getattr(config, "attn_logit_softcapping", None):
        config._attn_implementation = "eager"
        return f"attention logit soft-capping {config.attn_logit_softcapping}: exported with eager attention"
    return None


ADJUSTMENTS = [_attention_soft_capping]


def attention_windows(config) -> tuple[int | None, ...] | None:
    """Each layer's sliding window (None: full attention), as the model's own masks apply it: from
    `layer_types` where the config has them, else the one `sliding_window` for every layer."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    types = getattr(config, "layer_types", None)
    if types:
        return tuple(window if kind == "sliding_attention" else None for kind in types)
    return (window,) * config.num_hidden_layers


def _full_layer(key: torch.Tensor, value: torch.Tensor):
    """A cache layer holding `key`/`value` as they are. transformers 4.56-4.57 initialise a layer from
    the keys alone, 5.x from keys and values; the layer's own signature says which."""
    from transformers.cache_utils import DynamicLayer

    layer = DynamicLayer()
    arity = len(inspect.signature(layer.lazy_initialization).parameters)
    layer.lazy_initialization(*(key, value)[:arity])
    layer.keys, layer.values = key, value
    return layer


def _cache_argument(model: torch.nn.Module) -> str:
    """transformers 5 renamed the forward's `past_key_values` to `cache`; models not yet moved keep the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def hf_decoder_forward(model: torch.nn.Module):
    """(input_ids, attention_mask, position_ids, past) -> (logits, present) over transformers'
    DynamicCache with one full-history layer per decoder layer (cache.update would concatenate onto an
    empty tensor). Every layer keeps all its keys, so a sliding-window layer is exact past its window:
    the model's own mask hides what falls outside it."""
    from transformers import DynamicCache

    cache_argument = _cache_argument(model)

    def forward(input_ids, attention_mask, position_ids, past):
        cache = DynamicCache()
        cache.layers = [_full_layer(key, value) for key, value in past]
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=True, return_dict=True, **{cache_argument: cache})
        return out.logits, [(layer.keys, layer.values) for layer in cache.layers]

    return forward


def decoder_source(folder, config, tokenizer, tokenizer_files, *, source, source_sha256, kwargs,
                    trust_remote_code, architecture) -> ExportSource:
    from transformers import AutoModelForCausalLM, GenerationConfig

    config._attn_implementation = "sdpa"
    notes = [note for adjust in ADJUSTMENTS if (note := adjust(config))]
    model = _load_weights(AutoModelForCausalLM, folder, config=config, dtype=torch.float32,
                          trust_remote_code=trust_remote_code, **kwargs)
    text = config.get_text_config(decoder=True)
    heads = text.num_attention_heads
    spec = CausalLMSpec(
        num_layers=text.num_hidden_layers,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab_size=text.vocab_size,
        max_positions=getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", 2048),
        attention_windows=attention_windows(text),
    )
    try:
        generation_config = GenerationConfig.from_pretrained(folder, **({"gguf_file": kwargs["gguf_file"]}
                                                                        if "gguf_file" in kwargs else {}))
    except (OSError, ValueError):
        generation_config = None
    sentences = docstring_sentences(12)
    prompt_texts = [" ".join(sentences[:5]), sentences[8]]
    limit = min(128, spec.max_positions - GOLDEN_DECODE_STEPS - 1)  # prompt + decode steps must fit
    prompts = [tokenizer(t)["input_ids"][:limit] for t in prompt_texts]
    prompt_texts = [tokenizer.decode(p) for p in prompts]
    held_out = docstring_sentences(120)
    eval_ids = [tokenizer(" ".join(held_out[i : i + 10]))["input_ids"][: min(256, spec.max_positions - 1)]
                for i in range(40, 80, 10)]
    calib_ids = [tokenizer(" ".join(held_out[i : i + 5]))["input_ids"][:128] for i in range(80, 120, 5)]
    return causal_lm_source(
        name=Path(source).stem if Path(source).is_file() else Path(source).name,
        module=model, forward=hf_decoder_forward(model), spec=spec, prompts=prompts, prompt_texts=prompt_texts,
        eval_ids=eval_ids, calib_ids=calib_ids,
        facts={"architecture": architecture, "model_type": config.model_type,
               "parameters": sum(p.numel() for p in model.parameters()),
               "tested_family": config.model_type in TESTED_DECODER_TYPES},
        tokenizer=_special_ids(tokenizer, config, generation_config),
        source=source, source_sha256=source_sha256, extra_files=tokenizer_files, notes=notes,
        export_hint="If this architecture needs an adjustment, add a small named one in exporters/hf_decoder.py "
                    "(ADJUSTMENTS).")
