"""Hugging Face causal-LM decoders: the model's own forward over a transformers cache passed as flat tensors.

Architecture-specific help is small and named (see `ADJUSTMENTS`).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from edgetx.exporters.hf import UnsupportedModel, _load_weights, _special_ids
from edgetx.exporters.source import GOLDEN_DECODE_STEPS, ExportSource, causal_lm_source
from edgetx.exporters.causal_lm import CausalLMSpec
from edgetx.exporters.texts import docstring_sentences

TESTED_DECODER_TYPES = {"llama", "qwen2", "mistral", "gpt2"}


def _attention_soft_capping(config) -> str | None:
    """Gemma 2's attention logit soft-capping (tanh on the scores) exists only in eager attention; sdpa would
    drop it silently (transformers 4) or refuse the model (5)."""
    if getattr(config.get_text_config(decoder=True), "attn_logit_softcapping", None) or \
            getattr(config, "attn_logit_softcapping", None):
        config._attn_implementation = "eager"
        return "attention logit soft-capping: exported with eager attention"
    return None


def _experts_batched(model) -> str | None:
    """Mixture-of-experts layers (transformers 5) run their experts as grouped_mm by default, a kernel with no
    ONNX function; batched_mm (each routed token with its expert's weights, one batched MatMul) traces to
    Gather + MatMul. Its memory grows with tokens x experts per token x expert size (fine for decode steps)."""
    can_set = getattr(model, "_can_set_experts_implementation", None)
    if not can_set or not can_set() or not any(hasattr(m, "gate_up_proj") or hasattr(m, "up_proj")
                                               for m in model.modules() if type(m).__name__.endswith("Experts")):
        return None
    model.set_experts_implementation("batched_mm")
    return "mixture of experts: experts exported as batched_mm (Gather + batched MatMul)"


# Named adjustments: ("config", fn(config)) before loading, ("model", fn(model)) after; each returns the note
# recorded in the bundle's provenance, or None when it does not apply.
ADJUSTMENTS = [("config", _attention_soft_capping), ("model", _experts_batched)]


def _adjust(stage: str, target) -> list[str]:
    return [note for when, adjust in ADJUSTMENTS if when == stage and (note := adjust(target))]


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


def hf_decoder_forward(model: torch.nn.Module, layout: list[tuple[int, int, int, int]] | None = None):
    """(input_ids, attention_mask, position_ids, past) -> (logits, present) over transformers'
    DynamicCache with one full-history layer per decoder layer (cache.update would concatenate onto an
    empty tensor). Every layer keeps all its keys, so a sliding-window layer is exact past its window:
    the model's own mask hides what falls outside it.

    `layout` (per layer: key heads, key dim, value heads, value dim, from `cache_layout`) lets layers whose
    keys and values differ in shape (latent attention caches a compressed KV and a rotary key) share the
    contract's one (kv_heads, head_dim): each present is zero-padded to it and each past sliced back."""
    from transformers import DynamicCache

    cache_argument = _cache_argument(model)
    # Models that derive positions themselves (ALiBi, OPT's learned offsets from the mask, ...) take none; the
    # graph keeps the input so every decoder has the same contract.
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    heads = max(max(kh, vh) for kh, _, vh, _ in layout) if layout else None
    dim = max(max(kd, vd) for _, kd, _, vd in layout) if layout else None
    uniform = not layout or all((kh, kd, vh, vd) == (heads, dim, heads, dim) for kh, kd, vh, vd in layout)

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, dim - t.shape[3], 0, 0, 0, heads - t.shape[1]))

    def forward(input_ids, attention_mask, position_ids, past):
        cache = DynamicCache()
        if not uniform:
            past = [(key[:, :kh, :, :kd], value[:, :vh, :, :vd])
                    for (key, value), (kh, kd, vh, vd) in zip(past, layout)]
        cache.layers = [_full_layer(key, value) for key, value in past]
        positions = {"position_ids": position_ids} if takes_positions else {}
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, return_dict=True,
                    **positions, **{cache_argument: cache})
        present = [(layer.keys, layer.values) for layer in cache.layers]
        if not uniform:
            present = [(pad(key), pad(value)) for key, value in present]
        return out.logits, present

    return forward


def _unsupported_layers(model, architecture: str) -> None:
    """Layers whose cache is not keys and values (linear attention, SSM/conv states) have no place in the
    flat KV contract; say so before a long trace does."""
    from transformers import DynamicCache

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # configs that name no layer types: the probe forward decides
        return
    kinds = sorted({type(layer).__name__ for layer in layers if not hasattr(layer, "keys")
                    or "LinearAttention" in type(layer).__name__})
    if kinds:
        raise UnsupportedModel(f"{architecture} has recurrent layers ({', '.join(kinds)}: conv/recurrent state, not "
                               "keys and values); edgetx's decoder contract carries a KV cache only, so hybrid "
                               "linear-attention/SSM models are not supported yet")


@torch.no_grad()
def cache_layout(model, architecture: str) -> tuple[list[tuple[int, int, int, int]], int]:
    """Per layer (key heads, key dim, value heads, value dim) of the model's own cache, and the vocabulary, read
    from one short forward: it covers multi-query, grouped, latent (MLA) and decoder-of-encoder-decoder
    attention without reading each family's config names."""
    from transformers import DynamicCache

    _unsupported_layers(model, architecture)
    cache = DynamicCache()
    ids = torch.tensor([[1, 2, 3]])
    try:
        takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, return_dict=True,
              **({"position_ids": torch.arange(3)[None]} if takes_positions else {}),
              **{_cache_argument(model): cache})
    except Exception as e:
        message = " ".join(str(e).split())[:200]
        if "conv state" in message or "recurrent" in message:
            raise UnsupportedModel(f"{architecture} has recurrent layers (conv/recurrent state, not keys and "
                                   "values); edgetx's decoder contract carries a KV cache only") from None
        raise UnsupportedModel(f"{architecture}: its own PyTorch forward fails on a 3-token prompt with a "
                               f"DynamicCache ({type(e).__name__}: {message})") from None
    layers = getattr(cache, "layers", None) or []
    filled = [layer for layer in layers if getattr(layer, "keys", None) is not None and layer.keys.numel()]
    if not layers or len(filled) != len(layers):
        raise UnsupportedModel(f"{architecture}: {len(filled)} of {len(layers)} cache layers hold keys after a "
                               "forward (layers that share another's KV cache or keep none); edgetx needs one "
                               "key/value pair per layer")
    layout = [(int(layer.keys.shape[1]), int(layer.keys.shape[3]), int(layer.values.shape[1]),
               int(layer.values.shape[3])) for layer in filled]
    return layout, int(out.logits.shape[-1])


def decoder_source(folder, config, tokenizer, tokenizer_files, *, source, source_sha256, kwargs,
                    trust_remote_code, architecture) -> ExportSource:
    from transformers import AutoModelForCausalLM, GenerationConfig

    config._attn_implementation = "sdpa"
    notes = _adjust("config", config)
    model = _load_weights(AutoModelForCausalLM, folder, config=config, dtype=torch.float32,
                          trust_remote_code=trust_remote_code, **kwargs)
    notes += _adjust("model", model)
    text = config.get_text_config(decoder=True)
    layout, vocab = cache_layout(model, architecture)
    if "position_ids" not in inspect.signature(model.forward).parameters:
        notes.append(f"{architecture}.forward takes no position_ids: the model places tokens itself (from the "
                     "cache length or the mask), so a left-padded batch is exact only if it reads the mask")
    kv_heads, head_dim = max(max(kh, vh) for kh, _, vh, _ in layout), max(max(kd, vd) for _, kd, _, vd in layout)
    if any((kh, kd, vh, vd) != (kv_heads, head_dim, kv_heads, head_dim) for kh, kd, vh, vd in layout):
        notes.append(f"cache layers of differing shapes {sorted(set(layout))} (key heads, dim, value heads, dim): "
                     f"zero-padded to {kv_heads} x {head_dim} in the graph's past/present")
    spec = CausalLMSpec(
        num_layers=len(layout), num_kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab,
        max_positions=getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None) or 2048,
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
        module=model, forward=hf_decoder_forward(model, layout), spec=spec, prompts=prompts, prompt_texts=prompt_texts,
        eval_ids=eval_ids, calib_ids=calib_ids,
        facts={"architecture": architecture, "model_type": config.model_type,
               "parameters": sum(p.numel() for p in model.parameters()),
               "tested_family": config.model_type in TESTED_DECODER_TYPES},
        tokenizer=_special_ids(tokenizer, config, generation_config),
        source=source, source_sha256=source_sha256, extra_files=tokenizer_files, notes=notes,
        export_hint="If this architecture needs an adjustment, add a small named one in exporters/hf_decoder.py "
                    "(ADJUSTMENTS).")
