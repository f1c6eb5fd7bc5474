"""Encoder-decoder export: two graphs, an encoder run once per input and a decoder run once per generated token.

Encoder  inputs  the encoder's own (`input_ids` + `attention_mask` (batch, src) for text; `input_features`
                 (batch, mels, frames) for speech);
         outputs `last_hidden_state (batch, src, d_model)` and, per decoder layer, the cross-attention keys and
                 values `cross.{i}.key|value (batch, heads, src, head_dim)`: computed once from the encoder's
                 output, as the decoder's own cross-attention projections compute them.
Decoder  inputs  `decoder_input_ids (batch, tgt)`, `encoder_attention_mask (batch, src)` (text), the self-attention
                 cache `past_key_values.{i}.key|value (batch, heads, past, head_dim)` (past may be 0: the first step)
                 and the cross cache `cross.{i}.key|value`;
         outputs `logits (batch, tgt, vocab)` and `present.{i}.key|value (batch, heads, past+tgt, head_dim)`.
One decoder graph serves the first step and every later one; the cross cache never goes back through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetx.exporters.causal_lm import quiet_export
from edgetx.passes import files

KV = list[tuple[torch.Tensor, torch.Tensor]]
# (encoder feeds by name) -> (last_hidden_state, cross K/V per decoder layer)
EncodeForward = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, KV]]
# (decoder_input_ids, encoder_attention_mask or None, past self K/V, cross K/V) -> (logits, present self K/V)
DecodeForward = Callable[[torch.Tensor, torch.Tensor | None, KV, KV], tuple[torch.Tensor, KV]]


@dataclass(frozen=True)
class Seq2SeqSpec:
    """What the runtime needs to drive the two graphs."""

    num_layers: int  # decoder layers (self and cross caches)
    num_heads: int  # of the self-attention cache
    head_dim: int
    cross_heads: int
    cross_head_dim: int
    d_model: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int
    # the encoder's inputs: name -> (dtype, symbolic shape); text takes input_ids + attention_mask
    encoder_inputs: tuple[tuple[str, str, tuple], ...] = (("input_ids", "int64", ("batch", "src")),
                                                           ("attention_mask", "int64", ("batch", "src")))

    @property
    def masked(self) -> bool:
        """Whether the encoder takes an attention mask, which the decoder's cross-attention then takes too."""
        return any(name == "attention_mask" for name, _, _ in self.encoder_inputs)

    def encoder_io(self) -> dict:
        inputs = [{"name": n, "dtype": d, "shape": list(s)} for n, d, s in self.encoder_inputs]
        cross = ["batch", self.cross_heads, "src", self.cross_head_dim]
        outputs = [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "src", self.d_model]}]
        outputs += [{"name": f"cross.{i}.{part}", "dtype": "float32", "shape": cross}
                    for i in range(self.num_layers) for part in ("key", "value")]
        return {"inputs": inputs, "outputs": outputs}

    def decoder_io(self) -> dict:
        kv, kv_out = ["batch", self.num_heads, "past", self.head_dim], ["batch", self.num_heads, "past+tgt", self.head_dim]
        cross = ["batch", self.cross_heads, "src", self.cross_head_dim]
        inputs = [{"name": "decoder_input_ids", "dtype": "int64", "shape": ["batch", "tgt"]}]
        if self.masked:
            inputs.append({"name": "encoder_attention_mask", "dtype": "int64", "shape": ["batch", "src"]})
        inputs += [{"name": f"past_key_values.{i}.{part}", "dtype": "float32", "shape": kv}
                   for i in range(self.num_layers) for part in ("key", "value")]
        inputs += [{"name": f"cross.{i}.{part}", "dtype": "float32", "shape": cross}
                   for i in range(self.num_layers) for part in ("key", "value")]
        outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", "tgt", self.vocab_size]}]
        outputs += [{"name": f"present.{i}.{part}", "dtype": "float32", "shape": kv_out}
                    for i in range(self.num_layers) for part in ("key", "value")]
        return {"inputs": inputs, "outputs": outputs}

    def io_signature(self) -> dict:
        """The manifest's io block: the decoder (the main graph) and the encoder as a component."""
        return {**self.decoder_io(), "components": {"encoder": self.encoder_io()}}


class _FlatEncoder(torch.nn.Module):
    def __init__(self, encode: EncodeForward, module: torch.nn.Module, names: list[str]):
        super().__init__()
        self.module, self._encode, self._names = module, encode, names

    def forward(self, *tensors):
        hidden, cross = self._encode(dict(zip(self._names, tensors)))
        return (hidden, *[t for kv in cross for t in kv])


class _FlatDecoder(torch.nn.Module):
    def __init__(self, decode: DecodeForward, module: torch.nn.Module, masked: bool):
        super().__init__()
        self.module, self._decode, self._masked = module, decode, masked

    def forward(self, decoder_input_ids, encoder_attention_mask, past, cross):
        logits, present = self._decode(decoder_input_ids, encoder_attention_mask if self._masked else None,
                                       list(past), list(cross))
        return (logits, *[t for kv in present for t in kv])


def _example_encoder_inputs(spec: Seq2SeqSpec, batch: int = 2) -> dict[str, torch.Tensor]:
    """Tracing inputs of the encoder; sizes of at least 2 so export does not specialise them."""
    out = {}
    for name, dtype, shape in spec.encoder_inputs:
        if name == "input_ids":
            out[name] = torch.randint(4, spec.vocab_size, (batch, 7))
        elif name == "attention_mask":
            out[name] = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])[:batch]
        else:  # fixed feature dims (speech: mels x frames)
            out[name] = torch.randn(batch, *[d for d in shape[1:]])
    return out


def export_seq2seq(module: torch.nn.Module, spec: Seq2SeqSpec, encode: EncodeForward, decode: DecodeForward,
                   decoder_path: Path, opset: int = 18) -> None:
    """Export the decoder to `decoder_path` and the encoder beside it as `encoder.onnx` (torch.onnx, dynamo)."""
    decoder_path = Path(decoder_path)
    encoder_path = decoder_path.with_name("encoder.onnx")
    decoder_path.parent.mkdir(parents=True, exist_ok=True)
    names = [n for n, _, _ in spec.encoder_inputs]
    example = _example_encoder_inputs(spec)
    batch, src = torch.export.Dim("batch"), torch.export.Dim("src", min=2)
    dims = {"batch": batch, "src": src}
    encoder_shapes = tuple({axis: dims[d] for axis, d in enumerate(shape) if d in dims}
                           for _, _, shape in spec.encoder_inputs)
    with quiet_export():
        program = torch.onnx.export(_FlatEncoder(encode, module, names).eval(), tuple(example[n] for n in names),
                                    dynamo=True, opset_version=opset, input_names=names,
                                    output_names=[o["name"] for o in spec.encoder_io()["outputs"]],
                                    dynamic_shapes=(encoder_shapes,), optimize=True, verbose=False)
    files.save(program.model, encoder_path)
    with torch.no_grad():
        _, cross = encode(example)
    src_len = cross[0][0].shape[2]
    tgt, past = torch.export.Dim("tgt"), torch.export.Dim("past", min=0)
    past_kv = tuple((torch.randn(2, spec.num_heads, 3, spec.head_dim), torch.randn(2, spec.num_heads, 3, spec.head_dim))
                    for _ in range(spec.num_layers))
    mask = torch.ones(2, src_len, dtype=torch.int64)
    mask[1, src_len - 1:] = 0
    cross_dims = {0: batch, 2: dims["src"]} if spec.masked else {0: batch}
    shapes = ({0: batch, 1: tgt}, {0: batch, 1: dims["src"]} if spec.masked else None,
              tuple(({0: batch, 2: past}, {0: batch, 2: past}) for _ in range(spec.num_layers)),
              tuple((cross_dims, cross_dims) for _ in range(spec.num_layers)))
    decoder_names = [i["name"] for i in spec.decoder_io()["inputs"]]
    with quiet_export():
        program = torch.onnx.export(_FlatDecoder(decode, module, spec.masked).eval(),
                                    (torch.randint(4, spec.vocab_size, (2, 2)), mask if spec.masked else None,
                                     past_kv, tuple(cross)),
                                    dynamo=True, opset_version=opset, input_names=decoder_names,
                                    output_names=[o["name"] for o in spec.decoder_io()["outputs"]],
                                    dynamic_shapes=shapes, optimize=True, verbose=False)
    files.save(program.model, decoder_path)


@torch.no_grad()
def greedy(encode: EncodeForward, decode: DecodeForward, spec: Seq2SeqSpec, feeds: dict[str, torch.Tensor],
           prompt: list[int], steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's greedy decoding with the cache after the decoder `prompt` (its start token, and e.g. Whisper's
    language and task tokens), every row for `steps` tokens (rows that finish keep going: the golden steps are a
    fixed count): (encoder states, tokens (batch, steps), logits (batch, steps, vocab))."""
    hidden, cross = encode(feeds)
    batch = hidden.shape[0]
    mask = feeds.get("attention_mask")
    past = [(torch.zeros(batch, spec.num_heads, 0, spec.head_dim),) * 2 for _ in range(spec.num_layers)]
    token = torch.tensor([prompt] * batch, dtype=torch.int64)
    tokens, logits = [], []
    for _ in range(steps):
        out, past = decode(token, mask, past, cross)
        logits.append(out[:, -1].numpy())
        token = out[:, -1].argmax(-1, keepdim=True)
        tokens.append(token[:, 0].numpy())
    return hidden.numpy(), np.stack(tokens, 1).astype(np.int64), np.stack(logits, 1)


def capture_seq2seq_golden(encode: EncodeForward, decode: DecodeForward, spec: Seq2SeqSpec,
                           batch: dict[str, np.ndarray], prompt: list[int], steps: int) -> dict[str, np.ndarray]:
    """PyTorch's answers on a padded batch of real inputs: the encoder's states, greedy decoding with the cache
    (tokens and logits per step), and each row decoded alone (`decode.alone_*`: what a graph must give for a
    row whether or not the model is padding-invariant)."""
    feeds = {n: torch.from_numpy(batch[n]) for n, _, _ in spec.encoder_inputs}
    hidden, tokens, logits = greedy(encode, decode, spec, feeds, prompt, steps)
    golden = {f"encoder.{n}": batch[n] for n, _, _ in spec.encoder_inputs}
    golden.update({"encoder.last_hidden_state": hidden, "decode.prompt": np.array(prompt, np.int64),
                   "decode.tokens": tokens, "decode.logits": logits})
    alone_tokens, alone_logits = [], []
    for row in range(len(tokens)):
        single = {n: t[row : row + 1] for n, t in feeds.items()}
        if "attention_mask" in single:  # the row's real positions only, unpadded
            real = single["attention_mask"][0].bool()
            single = {n: (t[:, real] if t.dim() == 2 else t) for n, t in single.items()}
        _, row_tokens, row_logits = greedy(encode, decode, spec, single, prompt, steps)
        alone_tokens.append(row_tokens[0])
        alone_logits.append(row_logits[0])
    golden.update({"decode.alone_tokens": np.stack(alone_tokens), "decode.alone_logits": np.stack(alone_logits)})
    return golden
