"""Hugging Face model folders and GGUF files, offline: causal-LM decoders and BERT-family encoders.

The general path: load with transformers, export the model's own forward with dynamo. A
decoder's cache goes in and out as flat tensors through a `DynamicCache` filled layer by
layer, so the graph follows the same prefill/decode contract as the reference GPT.
Architecture-specific help is small and named (see `_ADJUSTMENTS`).
Loading is safe: safetensors or GGUF; pickle (`pytorch_model.bin`) only with allow_pickle;
never remote code unless trust_remote_code is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from edgetx.errors import EdgetxError
from edgetx.exporters.causal_lm import CausalLMSpec
from edgetx.exporters.encoder import EncoderSpec, capture_encoder_golden, export_encoder
from edgetx.exporters.source import GOLDEN_DECODE_STEPS, ExportSource, causal_lm_source
from edgetx.exporters.texts import docstring_sentences

ENCODER_TYPES = {"bert"}  # BERT family: BERT, MiniLM (model_type "bert")
TESTED_DECODER_TYPES = {"llama", "qwen2", "mistral", "gpt2"}
ENCODER_SENTENCES = 32


class UnsupportedModel(EdgetxError):
    """The folder holds a model edgetx cannot export; the message names what is missing."""


def _load_weights(auto_class, folder: Path, **kwargs):
    """`auto_class.from_pretrained` in eval mode; weights it cannot read (a damaged file, a pickle that
    weights_only=True refuses) become an edgetx error that names the folder."""
    try:
        return auto_class.from_pretrained(folder, **kwargs).eval()
    except (OSError, ValueError, RuntimeError) as e:
        cause = " ".join(str(e).split())[:300]
        raise UnsupportedModel(f"{folder}: transformers could not load the weights ({type(e).__name__}: {cause}); "
                               "a pickle that runs code is refused even with --allow-pickle") from None


def is_hf_model(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".gguf"
    config = path / "config.json"
    return config.is_file() and "model_type" in json.loads(config.read_text())


def _offline() -> None:
    """Never reach for a hub; keep transformers' advisory warnings out of the CLI's output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the GGUF de-quantization bar; build stages show progress


def _weight_files(folder: Path, allow_pickle: bool) -> tuple[list[Path], bool]:
    """The weight files to hash, and whether safetensors are used; refuses pickle unless allowed."""
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return safetensors, True
    pickles = sorted(folder.glob("pytorch_model*.bin")) + sorted(folder.glob("*.pt"))
    if pickles and not allow_pickle:
        raise UnsupportedModel(f"{folder} has only pickle weights ({pickles[0].name}); pickle can run code when "
                               "loaded. Convert them to safetensors, or pass --allow-pickle if you trust the source "
                               "(they are then loaded with torch.load(weights_only=True))")
    if not pickles:
        raise UnsupportedModel(f"{folder}: no weights found (expected model.safetensors or a .gguf file)")
    return pickles, False


def _sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load(path: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ExportSource:
    """Load a HF folder (or a .gguf file) and describe how to export it."""
    _offline()
    from transformers import AutoConfig

    path = Path(path)
    folder, gguf = (path.parent, path.name) if path.is_file() else (path, None)
    kwargs = {"gguf_file": gguf} if gguf else {}
    if gguf:
        weights, use_safetensors = [path], None
    else:
        weights, use_safetensors = _weight_files(folder, allow_pickle)
        kwargs["use_safetensors"] = use_safetensors
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                            **({"gguf_file": gguf} if gguf else {}))
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UnsupportedModel(f"{path}: this model needs its own Python code (auto_map in config.json); edgetx "
                                   "does not run remote code unless you pass --trust-remote-code") from None
        raise UnsupportedModel(f"{path}: transformers cannot read this config ({e})") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.model_type
    # GGUF configs name no architectures; the model type's causal-LM class stands in.
    architecture = (config.architectures or [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, type(config).__name__)])[0]
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModel(f"{path}: {architecture} (model_type {model_type!r}) is an encoder-decoder model; "
                               "edgetx exports causal-LM decoders and BERT-family encoders")
    tokenizer, tokenizer_files = _load_tokenizer(folder, gguf, trust_remote_code)
    common = dict(source=str(path), source_sha256=_sha256(weights), kwargs=kwargs,
                  trust_remote_code=trust_remote_code, architecture=architecture)
    if model_type in ENCODER_TYPES:
        return _encoder_source(folder, config, tokenizer, tokenizer_files, **common)
    if architecture.endswith("ForCausalLM") or architecture.endswith("LMHeadModel"):
        return _decoder_source(folder, config, tokenizer, tokenizer_files, **common)
    raise UnsupportedModel(f"{path}: {architecture} (model_type {model_type!r}) is neither a causal LM "
                           f"(…ForCausalLM) nor a BERT-family encoder ({', '.join(sorted(ENCODER_TYPES))})")


def _load_tokenizer(folder: Path, gguf: str | None, trust_remote_code: bool):
    """A fast tokenizer, and its tokenizer.json (what save_pretrained writes) to travel in the bundle."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                  **({"gguf_file": gguf} if gguf else {}))
    except Exception as e:  # transformers raises many kinds for a missing or broken tokenizer
        raise UnsupportedModel(f"{folder}: cannot load its tokenizer ({type(e).__name__}: {e}); edgetx needs "
                               "tokenizer.json or files transformers can turn into one") from None
    if not tokenizer.is_fast:
        raise UnsupportedModel(f"{folder}: only a slow (Python) tokenizer is available; edgetx's runtime needs a "
                               "fast tokenizer (tokenizer.json)")
    return tokenizer, {"tokenizer/tokenizer.json": tokenizer.backend_tokenizer.to_str().encode("utf-8")}


def _special_ids(tokenizer, config, generation_config=None) -> dict:
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if eos is None:
        eos = config.eos_token_id if getattr(config, "eos_token_id", None) is not None else tokenizer.eos_token_id
    eos_ids = sorted({eos} if isinstance(eos, int) else set(eos or []))
    chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return {"type": "hf", "file": "tokenizer/tokenizer.json", "eos_token_ids": eos_ids,
            "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
            "pad_token_id": tokenizer.pad_token_id, "chat_template": chat_template}


# --- decoders --------------------------------------------------------------------------------

def _cap_sliding_window(config) -> str | None:
    """Sliding-window attention (Mistral) keeps only the last W keys, which a growing
    past+seq cache cannot express; within the window it equals full attention. Export as full
    attention and cap the context at the window so the two never differ."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    config.sliding_window = None
    if hasattr(config, "layer_types") and config.layer_types:
        config.layer_types = ["full_attention"] * len(config.layer_types)
    config.max_position_embeddings = min(config.max_position_embeddings, window)
    return f"sliding window {window}: exported as full attention, context capped at {window}"


_ADJUSTMENTS = [_cap_sliding_window]


def hf_decoder_forward(model: torch.nn.Module):
    """(input_ids, attention_mask, position_ids, past) -> (logits, present) over transformers'
    DynamicCache, filled layer by layer (cache.update would concatenate onto an empty tensor)."""
    from transformers import DynamicCache

    config = model.config

    def forward(input_ids, attention_mask, position_ids, past):
        cache = DynamicCache(config=config)
        for layer, (key, value) in zip(cache.layers, past):
            layer.lazy_initialization(key)
            layer.keys, layer.values = key, value
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=cache, use_cache=True, return_dict=True)
        return out.logits, [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    return forward


def _decoder_source(folder, config, tokenizer, tokenizer_files, *, source, source_sha256, kwargs,
                    trust_remote_code, architecture) -> ExportSource:
    from transformers import AutoModelForCausalLM, GenerationConfig

    notes = [note for adjust in _ADJUSTMENTS if (note := adjust(config))]
    config._attn_implementation = "sdpa"
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
        source=source, source_sha256=source_sha256, extra_files=tokenizer_files, notes=notes)


# --- encoders --------------------------------------------------------------------------------

def sentence_transformers_pooling(folder: Path) -> dict:
    """The pooling a sentence-transformers folder asks for (modules.json), else mean without
    normalisation (plain feature extraction)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return {"mode": "mean", "normalize": False, "from": "default (no modules.json)"}
    modules = json.loads(modules_file.read_text())
    pooling = {"mode": "mean", "normalize": any(m.get("type", "").endswith("Normalize") for m in modules),
               "from": "modules.json"}
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            cfg = json.loads((folder / module["path"] / "config.json").read_text())
            modes = [m for m in ("mean", "cls", "max") if cfg.get(f"pooling_mode_{m}_tokens" if m != "cls"
                                                                   else "pooling_mode_cls_token")]
            if len(modes) != 1:
                raise UnsupportedModel(f"{folder}: pooling {modes or 'none'} in {module['path']}/config.json; "
                                       "edgetx supports exactly one of mean, cls or max pooling")
            pooling["mode"] = modes[0]
    return pooling


def _encoder_source(folder, config, tokenizer, tokenizer_files, *, source, source_sha256, kwargs,
                    trust_remote_code, architecture) -> ExportSource:
    from transformers import AutoModel

    config._attn_implementation = "sdpa"
    model = _load_weights(AutoModel, folder, config=config, dtype=torch.float32, add_pooling_layer=False,
                          trust_remote_code=trust_remote_code, **kwargs)
    names = ("input_ids", "attention_mask") + (("token_type_ids",) if "token_type_ids" in tokenizer.model_input_names
                                                else ())
    max_positions = min(config.max_position_embeddings, tokenizer.model_max_length or 10**9)
    st_config = folder / "sentence_bert_config.json"  # sentence-transformers truncates here
    if st_config.is_file():
        max_positions = min(max_positions, json.loads(st_config.read_text()).get("max_seq_length") or max_positions)
    spec = EncoderSpec(input_names=names, hidden_size=config.hidden_size, vocab_size=config.vocab_size,
                       max_positions=max_positions)
    pooling = sentence_transformers_pooling(folder)
    sentences = docstring_sentences(ENCODER_SENTENCES)
    batch = {k: np.asarray(v, dtype=np.int64) for k, v in
             tokenizer(sentences, padding=True, truncation=True, max_length=max_positions).items() if k in names}

    def export(path: Path, opset: int) -> None:
        export_encoder(model, spec, path, opset)

    def quant_data() -> dict[str, np.ndarray]:
        """Held-out sentences: 64 for quantization gates, 32 for calibration (none in the golden set)."""
        held_out = docstring_sentences(ENCODER_SENTENCES + 104)[ENCODER_SENTENCES + 8:]
        arrays = {}
        for prefix, texts in (("eval", held_out[:64]), ("calib", held_out[64:96])):
            encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_positions)
            arrays.update({f"{prefix}.{k}": np.asarray(v, dtype=np.int64) for k, v in encoded.items() if k in names})
        return arrays

    def golden():
        return capture_encoder_golden(model, spec, batch, pooling), {"sentences": sentences}

    tokenizer_block = _special_ids(tokenizer, config)
    tokenizer_block["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return ExportSource(
        name=Path(source).name, kind="encoder",
        model={"name": Path(source).name, "kind": "encoder", "architecture": architecture,
               "model_type": config.model_type, "hidden_size": spec.hidden_size, "vocab_size": spec.vocab_size,
               "max_positions": max_positions, "pooling": pooling,
               "parameters": sum(p.numel() for p in model.parameters())},
        tokenizer=tokenizer_block, io=spec.io_signature(), export=export, capture_golden=golden, quant_data=quant_data,
        source=source, source_sha256=source_sha256, extra_files=tokenizer_files, module=model,
        run_torch=lambda feeds: model(**{n: torch.tensor(np.array(feeds[n])) for n in names}))
