"""Hugging Face encoder-only models and their task heads: hidden states out (pooling in the runtime), or
logits of a sequence- or token-classification head.

Which model types are encoders is read from transformers' own registries (`is_encoder`): the type has a
base model and a masked-LM head, is neither a decoder nor an encoder-decoder, and its forward takes token
ids and an attention mask. The task comes from the folder's `architectures` (HEADS). The inputs are the
ones the forward takes and the tokenizer produces; a family's few named adjustments are ADJUSTMENTS.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import torch

from edgetx.exporters.encoder import EncoderSpec, capture_encoder_golden, export_encoder
from edgetx.exporters.hf import UnsupportedModel, _load_weights, _special_ids, export_with_eager_fallback
from edgetx.exporters.source import ExportSource
from edgetx.exporters.texts import docstring_sentences

ENCODER_SENTENCES = 32
# architecture suffix -> (model kind, transformers auto class, graph output)
HEADS = {"ForSequenceClassification": ("sequence-classification", "AutoModelForSequenceClassification", "logits"),
         "ForTokenClassification": ("token-classification", "AutoModelForTokenClassification", "logits")}
BARE = ("encoder", "AutoModel", "last_hidden_state")


def _no_compiled_modules(config) -> str | None:
    """A config that asks the model to torch.compile part of itself (ModernBERT's MLP): plain ops for export."""
    if getattr(config, "reference_compile", None) is not False and hasattr(config, "reference_compile"):
        config.reference_compile = False
        return "the model's own torch.compile of its MLP is turned off (reference_compile=False) so torch.export traces plain ops"
    return None


def _default_language(config) -> str | None:
    """Per-language adapters (X-MOD) chosen by a language id the text inputs do not carry: the first language's."""
    languages = getattr(config, "languages", None)
    if languages and hasattr(config, "default_language") and config.default_language is None:
        config.default_language = list(languages)[0]
        return (f"language adapters: exported with the default language {config.default_language!r} (the config's "
                "first; set default_language in config.json for another)")
    return None


# Config edits before loading, each applying where the config has what it is about; each returns its note for the
# bundle's export notes, or None when it does not apply.
ADJUSTMENTS = [_no_compiled_modules, _default_language]


def is_encoder(config, architecture: str) -> bool:
    """Whether transformers' registries call this model type an encoder-only model edgetx can export."""
    from transformers.models.auto import modeling_auto as auto

    model_type = config.model_type
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return False
    if architecture.endswith(("ForCausalLM", "LMHeadModel")) or model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return False
    return model_type in auto.MODEL_MAPPING_NAMES and model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def task_of(config) -> tuple[str, str, str]:
    """(model kind, auto class name, output) from the folder's architectures: a head it names, else bare."""
    for architecture in config.architectures or []:
        for suffix, task in HEADS.items():
            if architecture.endswith(suffix):
                return task
    return BARE


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


def _input_names(model, config, tokenizer, architecture: str, folder: Path) -> tuple[str, ...]:
    """input_ids, attention_mask, and token_type_ids where the forward takes them, the tokenizer makes
    them and the model has more than one token type (a single type is the forward's default of zeros)."""
    takes = inspect.signature(model.forward).parameters
    missing = [n for n in ("input_ids", "attention_mask") if n not in takes]
    if missing:
        raise UnsupportedModel(f"{folder}: {architecture}'s forward takes no {' or '.join(missing)}, so padded "
                               "batches of text cannot be run; edgetx exports encoders of token ids with an "
                               "attention mask (try a BERT-, RoBERTa- or DeBERTa-family checkpoint)")
    types = ("token_type_ids" in takes and "token_type_ids" in tokenizer.model_input_names
             and getattr(config, "type_vocab_size", 2) > 1)
    return ("input_ids", "attention_mask") + (("token_type_ids",) if types else ())


def _max_positions(model, config, tokenizer, folder: Path) -> int:
    """The longest input: the position table (less RoBERTa-style offsets past the padding id), the
    tokenizer's limit and sentence-transformers' max_seq_length."""
    limit = getattr(config.get_text_config(), "max_position_embeddings", None) or 10**9
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    offset = getattr(embeddings, "padding_idx", None)  # positions counted from padding_idx + 1
    if isinstance(offset, int) and hasattr(embeddings, "position_embeddings"):
        limit -= offset + 1
    limit = min(limit, tokenizer.model_max_length or 10**9)
    st_config = folder / "sentence_bert_config.json"  # sentence-transformers truncates here
    if st_config.is_file():
        limit = min(limit, json.loads(st_config.read_text()).get("max_seq_length") or limit)
    return int(limit)


def _labels(config, kind: str) -> list[str] | None:
    """A head's label names by class id (config.id2label), None for a bare encoder."""
    if kind == BARE[0]:
        return None
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


def _load(auto_name: str, folder: Path, config, trust_remote_code: bool, kwargs: dict):
    """The model in eval mode with sdpa attention; a bare encoder without its pooler where it has one."""
    import transformers
    from transformers.models.auto import modeling_auto as auto

    auto_class = getattr(transformers, auto_name)
    config._attn_implementation = "sdpa"
    extra = {}
    base = auto.MODEL_MAPPING_NAMES.get(config.model_type)
    base_class = getattr(transformers, base, None) if isinstance(base, str) else None
    if auto_name == BARE[1] and base_class is not None and "add_pooling_layer" in inspect.signature(base_class).parameters:
        extra["add_pooling_layer"] = False
    return _load_weights(auto_class, folder, config=config, dtype=torch.float32, trust_remote_code=trust_remote_code,
                         **extra, **kwargs)


def encoder_source(folder, config, tokenizer, tokenizer_files, *, source, source_sha256, kwargs,
                   trust_remote_code, architecture) -> ExportSource:
    """An ExportSource for an encoder-only model, bare or with a classification head."""
    kind, auto_name, output = task_of(config)
    notes = []
    notes += [note for adjust in ADJUSTMENTS if (note := adjust(config))]
    model = _load(auto_name, folder, config, trust_remote_code, kwargs)
    architecture = type(model).__name__ if kind != BARE[0] else architecture
    names = _input_names(model, config, tokenizer, architecture, folder)
    max_positions = _max_positions(model, config, tokenizer, folder)
    labels = _labels(config, kind)
    shape = {"encoder": (), "sequence-classification": ("batch", len(labels or [])),
             "token-classification": ("batch", "seq", len(labels or []))}[kind]
    text = config.get_text_config()  # a composite config (a vision-text encoder) keeps the sizes in its text part
    spec = EncoderSpec(input_names=names, hidden_size=text.hidden_size, vocab_size=text.vocab_size,
                       max_positions=max_positions, output=output, output_shape=shape)
    pooling = sentence_transformers_pooling(folder) if kind == BARE[0] else None
    sentences = docstring_sentences(ENCODER_SENTENCES)

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = getattr(config, "pad_token_id", None) or 0

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_positions)
        return {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items() if k in names}

    def export(path: Path, opset: int) -> None:
        export_with_eager_fallback(model, lambda: export_encoder(model, spec, path, opset), notes)

    def quant_data() -> dict[str, np.ndarray]:
        """Held-out sentences: 64 for quantization gates, 32 for calibration (none in the golden set)."""
        held_out = docstring_sentences(ENCODER_SENTENCES + 104)[ENCODER_SENTENCES + 8:]
        arrays = {}
        for prefix, texts in (("eval", held_out[:64]), ("calib", held_out[64:96])):
            arrays.update({f"{prefix}.{k}": v for k, v in encode(texts).items()})
        return arrays

    def golden():
        return capture_encoder_golden(model, spec, encode(sentences), pooling), {"sentences": sentences}

    def run_torch(feeds):
        with torch.no_grad():
            return model(**{n: torch.tensor(np.array(feeds[n])) for n in names})

    tokenizer_block = _special_ids(tokenizer, config)
    if tokenizer_block["pad_token_id"] is None:  # the mask hides padding; the model's own pad id is safest
        tokenizer_block["pad_token_id"] = getattr(config, "pad_token_id", None) or 0
    facts = {"name": Path(source).name, "kind": kind, "architecture": architecture, "model_type": config.model_type,
             "hidden_size": spec.hidden_size, "vocab_size": spec.vocab_size, "max_positions": max_positions,
             **({"pooling": pooling} if pooling is not None else {"labels": labels}),
             "parameters": sum(p.numel() for p in model.parameters())}
    return ExportSource(
        name=Path(source).name, kind=kind, model=facts, tokenizer=tokenizer_block, io=spec.io_signature(),
        export=export, capture_golden=golden, quant_data=quant_data, source=source, source_sha256=source_sha256,
        extra_files=tokenizer_files, module=model, run_torch=run_torch, notes=notes,
        export_hint="If this architecture needs an adjustment, add a small named one in exporters/hf_encoder.py "
                    "(ADJUSTMENTS).")


def refusal(path: Path, config, architecture: str) -> str:
    """Why a model that is neither a causal LM nor an encoder is refused, in one line."""
    return (f"{path}: {architecture} (model_type {config.model_type!r}) is neither a causal LM (…ForCausalLM) nor an "
            "encoder-only model (transformers lists no masked-LM head for it, or its config is a decoder) nor an "
            "encoder-decoder (config.is_encoder_decoder); edgetx exports those, encoder heads …ForSequenceClassification / "
            "…ForTokenClassification, text-to-text and speech-to-text encoder-decoders, and vision models "
            "(…ForImageClassification, image encoders)")
