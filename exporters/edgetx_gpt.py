"""The reference GPT family (`edgetx.models`): load a checkpoint and describe it for export."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

from edgetx.exporters.causal_lm import CausalLMSpec
from edgetx.exporters.source import ExportSource, causal_lm_source
from edgetx.models.data import validation_text
from edgetx.models.model import GPTConfig
from edgetx.models.train import DEFAULT_CHECKPOINT, load_checkpoint

ARCHITECTURE = "edgetx-gpt"


def is_checkpoint(path: Path) -> bool:
    """An edgetx checkpoint: model.safetensors plus a config.json with GPTConfig's fields only."""
    config = path / "config.json"
    if not (config.is_file() and (path / "model.safetensors").is_file()):
        return False
    try:
        keys = set(json.loads(config.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False
    return "n_embd" in keys and keys <= {f.name for f in fields(GPTConfig)}


def load(path: Path = DEFAULT_CHECKPOINT) -> ExportSource:
    path = Path(path)
    model = load_checkpoint(path)
    c = model.config
    spec = CausalLMSpec(num_layers=c.n_layer, num_kv_heads=c.n_head, head_dim=c.head_dim,
                        vocab_size=c.vocab_size, max_positions=c.block_size)
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        digest.update((path / name).read_bytes())
    # Golden prompts: held-out stdlib text the model never trained on, cut at line starts.
    prompts = [validation_text(96, offset=20_000), validation_text(40, offset=150_000)]
    return causal_lm_source(
        name=path.name if path != DEFAULT_CHECKPOINT else ARCHITECTURE,
        module=model,
        forward=model.forward,
        spec=spec,
        prompts=[list(p) for p in prompts],
        prompt_texts=[p.decode("utf-8", "replace") for p in prompts],
        facts={"architecture": ARCHITECTURE, "parameters": model.num_parameters(),
               "n_embd": c.n_embd, "n_head": c.n_head},
        tokenizer={"type": "bytes"},
        # Held-out code for quantization gates and calibration; none of it is in the golden prompts.
        eval_ids=[list(validation_text(c.block_size - 1, offset=o)) for o in (50_000, 100_000, 200_000, 250_000)],
        calib_ids=[list(validation_text(128, offset=300_000 + 5_000 * i)) for i in range(8)],
        source=str(path),
        source_sha256=digest.hexdigest(),
    )
