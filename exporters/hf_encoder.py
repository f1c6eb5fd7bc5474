"""Hugging Face encoders (BERT family): hidden states out, pooling in the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgetx.exporters.encoder import EncoderSpec, capture_encoder_golden, export_encoder
from edgetx.exporters.hf import UnsupportedModel, _load_weights, _special_ids
from edgetx.exporters.source import ExportSource
from edgetx.exporters.texts import docstring_sentences

ENCODER_TYPES = {"bert"}  # BERT family: BERT, MiniLM (model_type "bert")
ENCODER_SENTENCES = 32


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


def encoder_source(folder, config, tokenizer, tokenizer_files, *, source, source_sha256, kwargs,
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
