"""Causal-LM export: one ONNX graph that does both prefill and decode.

Inputs  `input_ids (batch, seq)`, `attention_mask (batch, past+seq)`, `position_ids (batch, seq)`,
        `past_key_values.{i}.key|value (batch, kv_heads, past, head_dim)` — past may be empty;
outputs `logits (batch, seq, vocab)`, `present.{i}.key|value (batch, kv_heads, past+seq, head_dim)`.
The names follow the Hugging Face / Optimum convention so other tools read the graph too.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetx.passes.gqa_padding import ATTENTION_WINDOWS_KEY
from edgetx.passes import files

# (input_ids, attention_mask, position_ids, past) -> (logits, present); past/present as
# a list of (key, value) pairs, one per layer.
CausalLMForward = Callable[..., tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]]


@dataclass(frozen=True)
class CausalLMSpec:
    """What the runtime needs to know to drive the graph."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    # Per layer, how many positions a query sees (itself included) under sliding-window attention, None for
    # full attention; recorded in the graph's metadata so a fused-attention pass can keep the window.
    attention_windows: tuple[int | None, ...] | None = None

    def input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask", "position_ids"]
        for i in range(self.num_layers):
            names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        return names

    def output_names(self) -> list[str]:
        names = ["logits"]
        for i in range(self.num_layers):
            names += [f"present.{i}.key", f"present.{i}.value"]
        return names

    def io_signature(self) -> dict:
        """The manifest's `io` block: names, dtypes and symbolic shapes."""
        kv = ["batch", self.num_kv_heads, "past", self.head_dim]
        kv_out = ["batch", self.num_kv_heads, "past+seq", self.head_dim]
        inputs = [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "past+seq"]},
            {"name": "position_ids", "dtype": "int64", "shape": ["batch", "seq"]},
        ]
        outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", self.vocab_size]}]
        for i in range(self.num_layers):
            for part in ("key", "value"):
                inputs.append({"name": f"past_key_values.{i}.{part}", "dtype": "float32", "shape": kv})
                outputs.append({"name": f"present.{i}.{part}", "dtype": "float32", "shape": kv_out})
        return {"inputs": inputs, "outputs": outputs}


class _FlatCausalLM(torch.nn.Module):
    """Adapts a model's forward to flat tensors in and out, which is what ONNX needs."""

    def __init__(self, forward: CausalLMForward, module: torch.nn.Module):
        super().__init__()
        self.module = module  # registered so export sees its parameters
        self._forward = forward

    def forward(self, input_ids, attention_mask, position_ids, past_key_values):
        logits, present = self._forward(input_ids, attention_mask, position_ids, list(past_key_values))
        return (logits, *[t for kv in present for t in kv])


def example_inputs(spec: CausalLMSpec, batch: int = 2, seq: int = 3, past: int = 4) -> tuple:
    """Tracing inputs. Batch and seq of at least 2 so export does not specialise them to 1."""
    input_ids = torch.randint(0, spec.vocab_size, (batch, seq))
    attention_mask = torch.ones(batch, past + seq, dtype=torch.int64)
    position_ids = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv_shape = (batch, spec.num_kv_heads, past, spec.head_dim)
    past_kv = tuple((torch.randn(kv_shape), torch.randn(kv_shape)) for _ in range(spec.num_layers))
    return input_ids, attention_mask, position_ids, past_kv


@contextlib.contextmanager
def quiet_export():
    """torch.onnx reports progress on stdout and logs warnings about internals (e.g. that
    torchvision is absent); keep the CLI's output readable. Errors still propagate."""
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch_logger.setLevel(logging.ERROR)
            yield
    finally:
        torch_logger.setLevel(level)


def export_causal_lm(
    module: torch.nn.Module,
    spec: CausalLMSpec,
    out_path: Path,
    forward: CausalLMForward | None = None,
    opset: int = 18,
) -> Path:
    """Export with torch.onnx (dynamo) to a single self-contained .onnx file."""
    wrapper = _FlatCausalLM(forward or module.forward, module).eval()
    batch, seq, past = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past", min=0)
    kv_dims = {0: batch, 2: past}
    dynamic_shapes = {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: torch.export.Dim.AUTO},
        "position_ids": {0: batch, 1: seq},
        "past_key_values": tuple((kv_dims, kv_dims) for _ in range(spec.num_layers)),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_export():
        program = torch.onnx.export(
            wrapper,
            example_inputs(spec),
            dynamo=True,
            opset_version=opset,
            input_names=spec.input_names(),
            output_names=spec.output_names(),
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    _name_symbolic_dims(program.model, spec)
    if spec.attention_windows and any(spec.attention_windows):
        program.model.metadata_props[ATTENTION_WINDOWS_KEY] = json.dumps(list(spec.attention_windows))
    files.save(program.model, out_path)  # external data beside it above files.EXTERNAL_DATA_BYTES
    return out_path


def _name_symbolic_dims(model, spec: CausalLMSpec) -> None:
    """Give the graph's dynamic dims the manifest's names (dynamo names them s0, s1, ...)."""
    names = {}
    for value in model.graph.inputs:
        if value.name == "input_ids":
            names[str(value.shape[0])], names[str(value.shape[1])] = "batch", "seq"
        elif value.name == "past_key_values.0.key":
            names[str(value.shape[2])] = "past"
    for value in [*model.graph.inputs, *model.graph.outputs]:
        if value.shape is None:
            continue
        dims = []
        for dim in value.shape:
            if isinstance(dim, int):
                dims.append(dim)
                continue
            text = str(dim)
            for old, new in sorted(names.items(), key=lambda kv: -len(kv[0])):
                text = text.replace(old, new)
            dims.append(text.replace(" ", ""))
        if value.name == "attention_mask":  # exported as its own symbol; it always spans past+seq
            dims[1] = "past+seq"
        value.shape = type(value.shape)(dims)


@torch.no_grad()
def capture_golden(forward: CausalLMForward, spec: CausalLMSpec, prompts: list[bytes | list[int]],
                   decode_steps: int = 16) -> dict[str, np.ndarray]:
    """Reference answers from PyTorch on real text, stored in the bundle.

    - prefill: logits for every position of prompt 0;
    - decode: `decode_steps` greedy steps with the KV cache (tokens fed and logits returned);
    - padded: all prompts as one left-padded batch, last-position logits per row, and each row run alone
      (`padded.alone_logits`): what a graph must give for a row whether or not the model is padding-invariant.
    """
    ids = [list(p) for p in prompts]
    prompt = torch.tensor([ids[0]], dtype=torch.int64)
    S = prompt.shape[1]
    empty = [(torch.zeros(1, spec.num_kv_heads, 0, spec.head_dim),) * 2 for _ in range(spec.num_layers)]
    logits, past = forward(prompt, torch.ones(1, S, dtype=torch.int64), torch.arange(S)[None], empty)
    golden = {"prefill.input_ids": prompt.numpy(), "prefill.logits": logits.numpy()}
    token = int(logits[0, -1].argmax())
    fed, step_logits = [], []
    for step in range(decode_steps):
        pos = S + step
        logits, past = forward(torch.tensor([[token]]), torch.ones(1, pos + 1, dtype=torch.int64),
                               torch.tensor([[pos]]), past)
        fed.append(token)
        step_logits.append(logits[0, -1].numpy())
        token = int(logits[0, -1].argmax())
    golden["decode.tokens"] = np.array(fed, dtype=np.int64)
    golden["decode.logits"] = np.stack(step_logits)

    if len(ids) > 1:
        width = max(len(p) for p in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, p in enumerate(ids):
            input_ids[row, width - len(p):], mask[row, width - len(p):] = p, 1
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        empty = [(torch.zeros(len(ids), spec.num_kv_heads, 0, spec.head_dim),) * 2
                 for _ in range(spec.num_layers)]
        logits, _ = forward(torch.from_numpy(input_ids), torch.from_numpy(mask), torch.from_numpy(positions), empty)
        alone = []
        for p in ids:
            row = torch.tensor([p], dtype=torch.int64)
            empty = [(torch.zeros(1, spec.num_kv_heads, 0, spec.head_dim),) * 2 for _ in range(spec.num_layers)]
            alone.append(forward(row, torch.ones_like(row), torch.arange(len(p))[None], empty)[0][0, -1].numpy())
        golden.update({"padded.input_ids": input_ids, "padded.attention_mask": mask,
                       "padded.position_ids": positions, "padded.logits": logits[:, -1].numpy(),
                       "padded.alone_logits": np.stack(alone)})
    return golden
