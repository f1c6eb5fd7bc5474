"""Building a bundle: the pipeline (export -> passes -> select -> quantize/gate -> verify -> write),
graph-candidate selection, and converting a written bundle (ORT format, fixed shapes).

`edgetx.build(...)` and `edgetx.build.build(...)` are the same call: this package is callable.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgetx.errors import EdgetxError

MODULE_SETTINGS = ("kind", "inputs", "tokenizer", "spec", "pooling", "held_out", "eos_token_ids", "name")


def build(model: Any, out: str | Path, *, kind: str | None = None,
          inputs: Sequence[str] | Sequence[Sequence[int]] | None = None, tokenizer: Any = None,
          spec: Any = None, pooling: str | dict | None = None,
          held_out: Sequence[str] | Sequence[Sequence[int]] | None = None,
          eos_token_ids: Sequence[int] | None = None, name: str | None = None, **options: Any):
    """Build a verified bundle at `out` from `model`, and return it (an `edgetx.bundle.Bundle`).

    `model` is a plain `torch.nn.Module`, a "package.module:factory" reference, a model folder or file
    (edgetx checkpoint, Hugging Face folder, .gguf), an `ExportSource`, or None (the reference checkpoint).
    For a module, `kind` names a registered model kind and its forward must follow that kind's contract,
    which a tiny probe call checks before export (an error names the part that is wrong):

    - "causal-lm": `forward(input_ids, attention_mask, position_ids, past) -> (logits, present)`; input_ids and
      position_ids (batch, seq) int64, attention_mask (batch, past_len+seq) int64 (1 = token, 0 = padding),
      past and present a list of (key, value) per layer, each (batch, kv_heads, past_len, head_dim), past_len 0
      at prefill; logits (batch, seq, vocab). One graph serves prefill and decode.
    - "encoder": `forward(input_ids, attention_mask[, token_type_ids]) -> last_hidden_state` (batch, seq,
      hidden); token_type_ids is fed when the forward has a parameter of that name. `pooling`: "mean"
      (default), "cls", "max", or {"mode": ..., "normalize": True}.

    `spec` (a dict or CausalLMSpec) gives num_layers, num_kv_heads, head_dim, vocab_size, max_positions; what
    it leaves out is read from the module's (or its `.config`'s) attributes (n_layer, num_key_value_heads,
    n_head, n_embd, block_size, ...), a causal LM's vocab_size from its logits.
    `inputs` are the golden prompts or sentences (texts with a tokenizer, else token-id lists; default with a
    tokenizer: held-out English prose); `held_out` the gate and calibration data (default likewise; without
    either there are no quantized variants). `tokenizer`: a tokenizers.Tokenizer, a tokenizer.json path or a
    transformers fast tokenizer; None = the bundle works on token ids only. `eos_token_ids` stop generation.
    `options` go to the pipeline (`edgetx.build.pipeline.build`): force, allow_pickle, trust_remote_code,
    optimize, quantize, formats, stage.
    """
    from edgetx.build.pipeline import _require_export_extra, build as run_pipeline

    settings = {key: value for key, value in zip(MODULE_SETTINGS, (kind, inputs, tokenizer, spec, pooling, held_out,
                                                                    eos_token_ids, name)) if value is not None}
    if settings or not (model is None or isinstance(model, Path) or isinstance(model, str) and ":" not in model):
        _require_export_extra()
        from edgetx import progress
        from edgetx.exporters.source import ExportSource, load_source

        if not isinstance(model, ExportSource) or settings:
            with options.get("stage", progress.stage)("load the module and probe its forward contract"):
                model = load_source(model, allow_pickle=options.get("allow_pickle", False),
                                    trust_remote_code=options.get("trust_remote_code", False), **settings)
            if options.get("quantize") and model.quant_data is None:
                raise EdgetxError(f"quantize={tuple(options['quantize'])} needs held-out data for its gates: pass "
                                  "held_out=[...] (texts with a tokenizer, else token-id lists), or quantize=()")
    return run_pipeline(model, out, **options)


class _CallableModule(types.ModuleType):
    """Lets `edgetx.build(model, out, ...)` call `build` (the package is also the verb)."""

    def __call__(self, *args: Any, **kwargs: Any):
        return build(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["build"]
