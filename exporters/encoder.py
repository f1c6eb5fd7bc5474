"""Encoder export (encoder-only transformers and their task heads): token ids in, one tensor out.

Inputs  `input_ids`, `attention_mask` and, when the model takes them, `token_type_ids` — each
        (batch, seq) int64;
outputs `last_hidden_state (batch, seq, hidden)` for a bare encoder (pooling, then L2 normalisation
        when the model's sentence-transformers config asks for it, is done by `Session.embed` in numpy,
        so one graph serves any pooling), or `logits` for a task head: `(batch, labels)` for sequence
        classification, `(batch, seq, labels)` for token classification.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetx.exporters.causal_lm import quiet_export
from edgetx.kinds.encoder import INVARIANCE_ROWS, pool
from edgetx.passes import files


@dataclass(frozen=True)
class EncoderSpec:
    input_names: tuple[str, ...]  # a subset of input_ids, attention_mask, token_type_ids, in order
    hidden_size: int
    vocab_size: int
    max_positions: int
    output: str = "last_hidden_state"  # or "logits" (task heads)
    output_shape: tuple[int | str, ...] = ()  # () = (batch, seq, hidden_size)

    def io_signature(self) -> dict:
        """The manifest's io block: (batch, seq) int64 inputs, the one float32 output."""
        inputs = [{"name": n, "dtype": "int64", "shape": ["batch", "seq"]} for n in self.input_names]
        shape = list(self.output_shape) or ["batch", "seq", self.hidden_size]
        return {"inputs": inputs, "outputs": [{"name": self.output, "dtype": "float32", "shape": shape}]}


class _EncoderOutputs(torch.nn.Module):
    """The model's forward with positional tensors in and its one named output out."""

    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...], output: str):
        super().__init__()
        self.model, self.input_names, self.output = model, input_names, output

    def forward(self, *tensors):
        return getattr(self.model(**dict(zip(self.input_names, tensors))), self.output)


def export_encoder(model: torch.nn.Module, spec: EncoderSpec, out_path: Path, opset: int = 18) -> Path:
    """Export with dynamic batch and seq; the example batch has one padded row so masks are traced generally."""
    wrapper = _EncoderOutputs(model, spec.input_names, spec.output).eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    values = {"input_ids": torch.randint(5, spec.vocab_size, (2, 8)), "token_type_ids": torch.zeros(2, 8, dtype=torch.long),
              "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3])}
    example = tuple(values[n] for n in spec.input_names)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_export():
        program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=opset,
                                    input_names=list(spec.input_names), output_names=[spec.output],
                                    dynamic_shapes=(tuple({0: batch, 1: seq} for _ in spec.input_names),),
                                    optimize=True, verbose=False)
    files.save(program.model, out_path)  # external data beside it above files.EXTERNAL_DATA_BYTES
    return out_path


@torch.no_grad()
def capture_encoder_golden(model: torch.nn.Module, spec: EncoderSpec, batch: dict[str, np.ndarray],
                           pooling: dict | None) -> dict[str, np.ndarray]:
    """PyTorch's output (and, for a bare encoder, pooled embeddings) for one padded batch of real sentences, and
    for its first rows each run alone (`batch.alone.{output}`, at the row's real positions, zeros elsewhere)."""
    feeds = {n: torch.from_numpy(batch[n]) for n in spec.input_names}
    output = getattr(model(**feeds), spec.output).numpy()
    golden = {f"batch.{n}": batch[n] for n in spec.input_names}
    golden[f"batch.{spec.output}"] = output
    mask = batch["attention_mask"].astype(bool)
    alone = np.zeros((min(INVARIANCE_ROWS, len(output)), *output.shape[1:]), np.float32)
    for row in range(len(alone)):
        single = {n: t[row : row + 1, torch.from_numpy(mask[row])] for n, t in feeds.items()}
        answer = getattr(model(**single), spec.output).numpy()[0]
        if output.ndim == 3:  # per token: back at the row's real positions
            alone[row, mask[row]] = answer
        else:
            alone[row] = answer
    golden[f"batch.alone.{spec.output}"] = alone
    if pooling is not None:
        golden["batch.embeddings"] = pool(output, batch["attention_mask"], pooling)
    return golden
