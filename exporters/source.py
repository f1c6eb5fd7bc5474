"""What an exporter hands the build: a loaded model and the facts needed to export and run it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgetx.errors import EdgetxError
from edgetx.exporters.causal_lm import CausalLMForward, CausalLMSpec


@dataclass
class ExportSource:
    name: str
    module: torch.nn.Module
    spec: CausalLMSpec
    forward: CausalLMForward  # (input_ids, attention_mask, position_ids, past) -> (logits, present)
    facts: dict  # architecture facts recorded in the manifest's `model` block
    tokenizer: dict  # the manifest's `tokenizer` block
    golden_prompts: list[bytes]  # real held-out text, as token ids (bytes for the reference model)
    source: str
    source_sha256: str
    kind: str = "causal-lm"
    extra_files: dict[str, Path] = field(default_factory=dict)  # bundle path -> file to copy in


def load_source(path: str | Path | None) -> ExportSource:
    """Pick the exporter family for `path` (None = the bundled reference checkpoint)."""
    from edgetx.exporters import edgetx_gpt

    if path is None:
        return edgetx_gpt.load()
    path = Path(path)
    if not path.exists():
        raise EdgetxError(f"{path}: no such model folder")
    if path.is_dir() and edgetx_gpt.is_checkpoint(path):
        return edgetx_gpt.load(path)
    raise EdgetxError(f"{path}: not a model edgetx can export yet; it takes an edgetx checkpoint folder "
                      "(config.json + model.safetensors written by `python -m edgetx.models.train`)")
