"""Hugging Face encoder-decoder models (T5, BART, mBART, Marian, Pegasus, ...): the model's own forward, traced twice.

The encoder graph runs the model's encoder and then one decoder step on an empty cross-attention cache, keeping
only what that step stored in the cache: the cross-attention keys and values of every layer, computed by the
decoder's own projections (no per-family code names them). The decoder graph runs the model with a cross cache
marked as filled, so its cross-attention reads the cache and never the encoder states. Which models are
encoder-decoders is read from transformers' registry (MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from edgetx.exporters.hf import UnsupportedModel, _load_weights, _special_ids, export_with_eager_fallback
from edgetx.exporters.hf_decoder import _full_layer
from edgetx.exporters.seq2seq import Seq2SeqSpec, capture_seq2seq_golden, export_seq2seq
from edgetx.exporters.source import ExportSource
from edgetx.exporters.texts import docstring_sentences

GOLDEN_SENTENCES = 4
GOLDEN_STEPS = 16
GATE_SENTENCES = 16


def is_seq2seq(config, architecture: str = "") -> bool:
    """Whether transformers' registries call this model type a text-to-text encoder-decoder (and the folder's
    architecture is not the family's decoder alone, e.g. BartForCausalLM)."""
    from transformers.models.auto import modeling_auto as auto

    return bool(getattr(config, "is_encoder_decoder", False)) and not architecture.endswith(
        ("ForCausalLM", "LMHeadModel")) and config.model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES


def _cache_argument(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _filled(pairs) -> "object":
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layers = [_full_layer(key, value) for key, value in pairs]
    return cache


def seq2seq_forwards(model, start: int):
    """(encode, decode) over the model's own forward with transformers' EncoderDecoderCache (see module doc)."""
    from transformers import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput  # what every family reads (some index it, some name it)

    cache_argument = _cache_argument(model)
    encoder = model.get_encoder()
    d_model = _d_model(model.config)

    def encode(feeds: dict[str, torch.Tensor]):
        hidden = encoder(**feeds, return_dict=True).last_hidden_state
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        first = torch.full((hidden.shape[0], 1), start, dtype=torch.int64)
        mask = {"attention_mask": feeds["attention_mask"]} if "attention_mask" in feeds else {}
        model(decoder_input_ids=first, encoder_outputs=BaseModelOutput(last_hidden_state=hidden), use_cache=True, return_dict=True,
              **mask, **{cache_argument: cache})
        return hidden, [(layer.keys, layer.values) for layer in cache.cross_attention_cache.layers]

    def decode(decoder_input_ids, encoder_attention_mask, past, cross):
        cache = EncoderDecoderCache(_filled(past), _filled(cross))
        cache.is_updated = {i: True for i in range(len(cross))}  # cross-attention reads the cache as it is
        batch, src = cross[0][0].shape[0], cross[0][0].shape[2]
        unused = torch.zeros(batch, src, d_model)  # the encoder states: the filled cross cache stands in for them
        mask = {"attention_mask": encoder_attention_mask} if encoder_attention_mask is not None else {}
        out = model(decoder_input_ids=decoder_input_ids, encoder_outputs=BaseModelOutput(last_hidden_state=unused), use_cache=True,
                    return_dict=True, **mask, **{cache_argument: cache})
        return out.logits, [(layer.keys, layer.values) for layer in cache.self_attention_cache.layers]

    return encode, decode


def _d_model(config) -> int:
    """The encoder states' width: the config's own, else its encoder sub-config's (T5Gemma, EncoderDecoderModel)."""
    for source in (config, getattr(config, "encoder", None)):
        for name in ("d_model", "hidden_size", "n_embd"):
            value = getattr(source, name, None)
            if isinstance(value, int):
                return value
    raise UnsupportedModel(f"{config.model_type}: the config names no model width (d_model / hidden_size)")


@torch.no_grad()
def _spec(model, encode, decode, start: int, encoder_inputs, max_source: int, max_target: int,
          architecture: str, probe: dict[str, torch.Tensor] | None = None) -> Seq2SeqSpec:
    """The cache layout from one short run of the model itself (heads and head size of the self and cross caches);
    `probe` is the encoder input of that run (default: three tokens)."""
    feeds = probe or {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.int64)}
    try:
        _, cross = encode(feeds)
        empty = [(torch.zeros(1, cross[0][0].shape[1], 0, cross[0][0].shape[3]),) * 2 for _ in cross]
        logits, present = decode(torch.tensor([[start]]), feeds.get("attention_mask"), empty, cross)
    except Exception as e:
        message = " ".join(str(e).split())[:200]
        raise UnsupportedModel(f"{architecture}: its own PyTorch forward fails on a short input with an "
                               f"EncoderDecoderCache ({type(e).__name__}: {message})") from None
    if not cross or len(present) != len(cross):
        raise UnsupportedModel(f"{architecture}: {len(cross)} cross-attention and {len(present)} self-attention cache "
                               "layers after a forward; edgetx needs one of each per decoder layer")
    (_, heads, _, dim), (_, cross_heads, _, cross_dim) = present[0][0].shape, cross[0][0].shape
    return Seq2SeqSpec(num_layers=len(present), num_heads=int(heads), head_dim=int(dim), cross_heads=int(cross_heads),
                       cross_head_dim=int(cross_dim), d_model=_d_model(model.config), vocab_size=int(logits.shape[-1]),
                       max_source_positions=max_source, max_target_positions=max_target,
                       encoder_inputs=encoder_inputs)


def _positions(config, tokenizer) -> tuple[int, int]:
    """The longest source and target: the learned position tables where the model has them, else the tokenizer's
    limit (relative positions, T5), else 512."""
    limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 10**6 else 512
    table = getattr(config, "max_position_embeddings", None)
    source = getattr(config, "max_source_positions", None) or table or limit
    target = getattr(config, "max_target_positions", None) or table or limit
    return int(source), int(target)


def _generation(folder: Path, config) -> dict:
    """Decoding settings the model's generation config asks for: start token, a forced first token (target
    language of mBART / M2M), end tokens."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(folder)
    except (OSError, ValueError):
        generation = None
    start = getattr(generation, "decoder_start_token_id", None)
    # transformers 5 keeps generation settings off some configs (T5's has no decoder_start_token_id)
    for source in ("decoder_start_token_id", "bos_token_id", "pad_token_id"):
        start = start if start is not None else getattr(config, source, None)
    if start is None:
        raise UnsupportedModel(f"{folder}: the config names no decoder_start_token_id (nor a bos or pad token)")
    forced = getattr(generation, "forced_bos_token_id", None) or getattr(config, "forced_bos_token_id", None)
    return {"decoder_start_token_id": int(start), **({"forced_bos_token_id": int(forced)} if forced is not None else {})}


def seq2seq_source(folder, config, tokenizer, tokenizer_files, *, source, source_sha256, kwargs,
                   trust_remote_code, architecture) -> ExportSource:
    """An ExportSource for a text-to-text encoder-decoder."""
    from transformers import AutoModelForSeq2SeqLM

    config._attn_implementation = "sdpa"
    notes: list[str] = []
    model = _load_weights(AutoModelForSeq2SeqLM, folder, config=config, dtype=torch.float32,
                          trust_remote_code=trust_remote_code, **kwargs)
    settings = _generation(folder, config)
    start = settings["decoder_start_token_id"]
    encode, decode = seq2seq_forwards(model, start)
    max_source, max_target = _positions(config, tokenizer)
    spec = _spec(model, encode, decode, start, Seq2SeqSpec.encoder_inputs, max_source, max_target, architecture)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = getattr(config, "pad_token_id", None) or 0
    sentences = docstring_sentences(GOLDEN_SENTENCES + GATE_SENTENCES + 24)

    def encode_texts(texts: list[str]) -> dict[str, np.ndarray]:
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=min(max_source, 128))
        return {k: np.asarray(encoded[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}

    def export(path: Path, opset: int) -> None:
        export_with_eager_fallback(model, lambda: export_seq2seq(model, spec, encode, decode, path, opset), notes)

    def golden():
        texts = sentences[:GOLDEN_SENTENCES]
        steps = min(GOLDEN_STEPS, max_target - 1)
        return (capture_seq2seq_golden(encode, decode, spec, encode_texts(texts), [start], steps),
                {"sentences": texts, "decode_steps": steps})

    def quant_data() -> dict[str, np.ndarray]:
        """Held-out sentences: `eval.*` for the gates (not in the golden set)."""
        held_out = sentences[GOLDEN_SENTENCES + 8 : GOLDEN_SENTENCES + 8 + GATE_SENTENCES]
        return {f"eval.{k}": v for k, v in encode_texts(held_out).items()}

    tokenizer_block = _special_ids(tokenizer, config)
    facts = {"name": Path(source).name, "kind": "seq2seq", "architecture": architecture,
             "model_type": config.model_type, "vocab_size": spec.vocab_size, "max_positions": max_source,
             "max_target_positions": max_target, "num_layers": spec.num_layers, "num_heads": spec.num_heads,
             "head_dim": spec.head_dim, "hidden_size": spec.d_model, **settings,
             "parameters": sum(p.numel() for p in model.parameters())}
    return ExportSource(name=Path(source).name, kind="seq2seq", model=facts, tokenizer=tokenizer_block,
                        io=spec.io_signature(), export=export, capture_golden=golden, quant_data=quant_data,
                        source=source, source_sha256=source_sha256, extra_files=tokenizer_files, module=model,
                        notes=notes,
                        export_hint="If this architecture needs an adjustment, add a small named one in "
                                    "exporters/hf_seq2seq.py.")
