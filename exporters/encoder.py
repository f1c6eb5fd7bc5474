"""Encoder export (BERT family): token ids in, hidden states out; pooling runs in the runtime.

Inputs  `input_ids`, `attention_mask` and, when the model has them, `token_type_ids` — each
        (batch, seq) int64;
outputs `last_hidden_state (batch, seq, hidden)`.
Pooling (mean / cls, then L2 normalisation when the model's sentence-transformers config asks
for it) is done by `Session.embed` in numpy, so one graph serves any pooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetx.exporters.causal_lm import quiet_export
from edgetx.kinds.encoder import pool
from edgetx.passes import files


@dataclass(frozen=True)
class EncoderSpec:
    input_names: tuple[str, ...]  # a subset of input_ids, attention_mask, token_type_ids, in order
    hidden_size: int
    vocab_size: int
    max_positions: int

    def io_signature(self) -> dict:
        inputs = [{"name": n, "dtype": "int64", "shape": ["batch", "seq"]} for n in self.input_names]
        outputs = [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "seq", self.hidden_size]}]
        return {"inputs": inputs, "outputs": outputs}


class _EncoderOutputs(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...]):
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.input_names, tensors)), return_dict=True).last_hidden_state


def export_encoder(model: torch.nn.Module, spec: EncoderSpec, out_path: Path, opset: int = 18) -> Path:
    wrapper = _EncoderOutputs(model, spec.input_names).eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    example = tuple(torch.randint(0, 2 if n != "input_ids" else spec.vocab_size, (2, 8)) for n in spec.input_names)
    example = tuple(torch.ones_like(t) if n == "attention_mask" else t for n, t in zip(spec.input_names, example))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_export():
        program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=opset,
                                    input_names=list(spec.input_names), output_names=["last_hidden_state"],
                                    dynamic_shapes=(tuple({0: batch, 1: seq} for _ in spec.input_names),),
                                    optimize=True, verbose=False)
    files.save(program.model, out_path)  # external data beside it above files.EXTERNAL_DATA_BYTES
    return out_path


@torch.no_grad()
def capture_encoder_golden(model: torch.nn.Module, spec: EncoderSpec, batch: dict[str, np.ndarray],
                           pooling: dict) -> dict[str, np.ndarray]:
    """PyTorch's hidden states and pooled embeddings for one padded batch of real sentences."""
    feeds = {n: torch.from_numpy(batch[n]) for n in spec.input_names}
    hidden = model(**feeds, return_dict=True).last_hidden_state.numpy()
    golden = {f"batch.{n}": batch[n] for n in spec.input_names}
    golden["batch.last_hidden_state"] = hidden
    golden["batch.embeddings"] = pool(hidden, batch["attention_mask"], pooling)
    return golden
