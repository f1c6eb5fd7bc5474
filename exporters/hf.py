"""Hugging Face model folders and GGUF files, offline: causal-LM decoders, encoder-only models (+ heads) and
vision models (image classification, image encoders).

The general path: load with transformers, export the model's own forward with dynamo. A
decoder's cache goes in and out as flat tensors through a `DynamicCache` filled layer by
layer, so the graph follows the same prefill/decode contract as the reference GPT.
Decoders are in hf_decoder.py (architecture adjustments: ADJUSTMENTS), encoders in hf_encoder.py, vision
models in hf_vision.py (routed before a tokenizer is looked for: they take images).
Loading is safe: safetensors or GGUF; pickle (`pytorch_model.bin`) only with allow_pickle;
never remote code unless trust_remote_code is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path


from edgetx.errors import EdgetxError
from edgetx.exporters.source import ExportSource



class UnsupportedModel(EdgetxError):
    """The folder holds a model edgetx cannot export; the message names what is missing."""


def _load_weights(auto_class, folder: Path, **kwargs):
    """`auto_class.from_pretrained` in eval mode; weights it cannot read (a damaged file, a pickle that
    weights_only=True refuses) become an edgetx error that names the folder. A model class without sdpa
    attention is loaded with eager attention (same math, exported as plain MatMul/Softmax). With
    output_loading_info=True it returns (model, info) as from_pretrained does."""
    config = kwargs.get("config")
    try:
        loaded = auto_class.from_pretrained(folder, **kwargs)  # (model, loading info) with output_loading_info
        (loaded[0] if isinstance(loaded, tuple) else loaded).eval()
        return loaded
    except ValueError as e:
        if config is None or config._attn_implementation != "sdpa" or "attention implementation" not in str(e):
            raise _unreadable(folder, e) from None
        config._attn_implementation = "eager"
        return _load_weights(auto_class, folder, **kwargs)
    except (OSError, RuntimeError) as e:
        raise _unreadable(folder, e) from None


# torch.export's decomposition of a reshape after sdpa attention on some models (T5's relative-bias attention):
# "Cannot view a tensor with shape ... and strides ...". Eager attention is the same math in plain ops.
_SDPA_VIEW_FAILURE = "Cannot view a tensor with shape"


def export_with_eager_fallback(model, export: Callable[[], None], notes: list[str]) -> None:
    """Run `export`; if torch.export cannot decompose the model's sdpa attention, switch the model to eager
    attention (the same math in plain MatMul/Softmax) and export again, saying so in `notes`."""
    try:
        export()
    except Exception as e:
        chain, cause = [], e
        while cause is not None:
            chain.append(str(cause))
            cause = cause.__cause__ or cause.__context__
        config = getattr(model, "config", None)
        if getattr(config, "_attn_implementation", None) != "sdpa" or not any(_SDPA_VIEW_FAILURE in c for c in chain):
            raise
        model.config._attn_implementation = "eager"
        for module in model.modules():  # sub-models with configs of their own (an encoder-decoder's halves)
            config = getattr(module, "config", None)
            if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
                config._attn_implementation = "eager"
        export()
        notes.append("exported with eager attention: torch.export could not decompose the model's sdpa attention "
                     "(a reshape of its output); eager is the same math in plain ops")


def _unreadable(folder: Path, error: Exception) -> UnsupportedModel:
    cause = " ".join(str(error).split())[:300]
    return UnsupportedModel(f"{folder}: transformers could not load the weights ({type(error).__name__}: {cause}); "
                            "a pickle that runs code is refused even with --allow-pickle")


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
    from edgetx.exporters.hf_seq2seq import is_seq2seq, seq2seq_source
    from edgetx.exporters.hf_speech import is_speech_seq2seq, speech_source

    if getattr(config, "is_encoder_decoder", False) and not is_seq2seq(config, architecture) and \
            not is_speech_seq2seq(config, architecture):
        raise UnsupportedModel(f"{path}: {architecture} (model_type {model_type!r}) is an encoder-decoder model of a "
                               "kind edgetx does not export yet; it exports causal-LM decoders, encoder-only models and "
                               "their heads, vision models, and text-to-text and speech-to-text encoder-decoders "
                               "(transformers' seq2seq registries)")
    from edgetx.exporters.hf_vision import vision_source, vision_task

    vision = None if gguf else vision_task(config)
    if vision is not None and vision.tower and _has_tokenizer(folder):  # a dual encoder with its text side
        from edgetx.exporters.hf_zero_shot import zero_shot_source

        tokenizer, tokenizer_files = _load_tokenizer(folder, gguf, trust_remote_code)
        return zero_shot_source(folder, config, tokenizer, tokenizer_files, source=str(path),
                                source_sha256=_sha256(weights), kwargs=kwargs, trust_remote_code=trust_remote_code,
                                architecture=architecture)
    if vision is not None:  # images in: no tokenizer to load
        return vision_source(folder, config, vision, source=str(path), source_sha256=_sha256(weights), kwargs=kwargs,
                             trust_remote_code=trust_remote_code, architecture=architecture)
    tokenizer, tokenizer_files = _load_tokenizer(folder, gguf, trust_remote_code)
    common = dict(source=str(path), source_sha256=_sha256(weights), kwargs=kwargs,
                  trust_remote_code=trust_remote_code, architecture=architecture)
    from edgetx.exporters.hf_decoder import decoder_source
    from edgetx.exporters.hf_encoder import encoder_source, is_encoder, refusal

    if is_seq2seq(config, architecture):
        return seq2seq_source(folder, config, tokenizer, tokenizer_files, **common)
    if is_speech_seq2seq(config, architecture):
        return speech_source(folder, config, tokenizer, tokenizer_files, **common)

    causal_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    # a model type's own causal-LM class (BertGenerationDecoder, ...) is a decoder too
    causal = architecture.endswith(("ForCausalLM", "LMHeadModel")) or architecture in (
        causal_class if isinstance(causal_class, (tuple, list)) else (causal_class,))
    if is_encoder(config, architecture):
        made = encoder_source(folder, config, tokenizer, tokenizer_files, **common)
    elif causal:
        made = decoder_source(folder, config, tokenizer, tokenizer_files, **common)
    else:
        raise UnsupportedModel(refusal(path, config, architecture))
    if gguf:
        made.model["gguf"] = gguf_types(path)
    return made


def gguf_types(path: Path) -> dict:
    """How a GGUF file stores its tensors: the count per type (`tensor_types`) and that of the layers'
    weight matrices (`matrix_types`, the `blk.*` 2-D tensors), e.g. {"Q4_K": 96, "Q6_K": 16}."""
    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    count: dict[str, dict[str, int]] = {"tensor_types": {}, "matrix_types": {}}
    for tensor in tensors:
        kind = tensor.tensor_type.name
        count["tensor_types"][kind] = count["tensor_types"].get(kind, 0) + 1
        if tensor.name.startswith("blk.") and len(tensor.shape) == 2:
            count["matrix_types"][kind] = count["matrix_types"].get(kind, 0) + 1
    return count


def _has_tokenizer(folder: Path) -> bool:
    """Whether the folder carries a tokenizer (a fast one's tokenizer.json, or the files a slow one reads)."""
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                       "spiece.model", "vocab.txt"))


def _load_tokenizer(folder: Path, gguf: str | None, trust_remote_code: bool):
    """A fast tokenizer, and its tokenizer.json (what save_pretrained writes) to travel in the bundle."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                  **({"gguf_file": gguf} if gguf else {}))
    except Exception as e:  # transformers raises many kinds for a missing or broken tokenizer
        tokenizer = None if gguf else _plain_fast_tokenizer(folder)
        if tokenizer is None:
            raise UnsupportedModel(f"{folder}: cannot load its tokenizer ({type(e).__name__}: {e}); edgetx needs "
                                   "tokenizer.json or files transformers can turn into one") from None
    if not tokenizer.is_fast:
        raise UnsupportedModel(f"{folder}: only a slow (Python) tokenizer is available; edgetx's runtime needs a "
                               "fast tokenizer (tokenizer.json)")
    return tokenizer, {"tokenizer/tokenizer.json": tokenizer.backend_tokenizer.to_str().encode("utf-8")}


def _plain_fast_tokenizer(folder: Path):
    """tokenizer.json with the special tokens of tokenizer_config.json, when the folder names a tokenizer
    class this transformers lacks (folders saved by transformers 5 name `TokenizersBackend`, unknown to 4.x)."""
    from transformers import PreTrainedTokenizerFast

    if not (folder / "tokenizer.json").is_file():
        return None
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    specials = {key: value for key, value in config.items()
                if key.endswith("_token") and isinstance(value, str)}
    names = config.get("model_input_names") or ["input_ids", "attention_mask"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), model_input_names=names,
                                        **specials)
    if isinstance(config.get("chat_template"), str):
        tokenizer.chat_template = config["chat_template"]
    if config.get("model_max_length"):
        tokenizer.model_max_length = config["model_max_length"]
    return tokenizer


def _special_ids(tokenizer, config, generation_config=None) -> dict:
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if eos is None:
        eos = config.eos_token_id if getattr(config, "eos_token_id", None) is not None else tokenizer.eos_token_id
    eos_ids = sorted({eos} if isinstance(eos, int) else set(eos or []))
    chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return {"type": "hf", "file": "tokenizer/tokenizer.json", "eos_token_ids": eos_ids,
            "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
            "pad_token_id": tokenizer.pad_token_id, "chat_template": chat_template}
