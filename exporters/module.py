"""A plain `torch.nn.Module` in: check its forward against the model kind's contract with a tiny probe,
then describe it to the build as an `ExportSource` (the same pipeline as every other model).

Contracts (the README's "Your own nn.Module" section):
- causal-lm: `forward(input_ids, attention_mask, position_ids, past) -> (logits, present)`, past/present a
  list of (key, value) per layer, each (batch, kv_heads, past_len, head_dim); one graph for prefill (past of
  length 0) and decode.
- encoder: `forward(input_ids, attention_mask[, token_type_ids]) -> last_hidden_state (batch, seq, hidden)`.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from edgetx.errors import EdgetxError
from edgetx.exporters.causal_lm import CausalLMSpec
from edgetx.exporters.encoder import EncoderSpec, capture_encoder_golden, export_encoder
# the factory and tokenizer helpers live beside this file; their names stay importable from here
from edgetx.exporters.module_factory import SETTINGS, is_factory_ref, load_factory, load_weights  # noqa: F401
from edgetx.exporters.module_tokenizer import (BundleTokenizer, Inputs, bundle_tokenizer, token_ids, tokenizer_block,
                                               tokenizer_files)
from edgetx.exporters.source import GOLDEN_DECODE_STEPS, ExportSource, causal_lm_source
from edgetx.exporters.texts import docstring_sentences
from edgetx.kinds import known_kinds
from edgetx.kinds.encoder import POOLING_MODES

class ContractError(EdgetxError):
    """The module's forward does not follow its kind's contract; the message names the part that is wrong."""


# --- where the spec comes from ------------------------------------------------------------------------------

# Attribute names looked for on `spec`, then `module.config`, then the module itself, for each spec field.
SPEC_NAMES = {
    "num_layers": ("num_layers", "n_layer", "n_layers", "num_hidden_layers"),
    "num_kv_heads": ("num_kv_heads", "num_key_value_heads", "n_kv_head", "n_kv_heads"),
    "num_heads": ("num_heads", "n_head", "n_heads", "num_attention_heads"),
    "head_dim": ("head_dim",),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "vocab_size": ("vocab_size", "n_vocab"),
    "max_positions": ("max_positions", "max_position_embeddings", "n_positions", "block_size", "max_seq_len",
                      "context_length"),
}

MODULE_EXPORT_HINT = ("torch.export traces the forward: data-dependent Python control flow, .item() and "
                      "in-place cache writes are what usually break it (see the README's 'Your own nn.Module').")



def _lookup(field: str, spec: dict, module: torch.nn.Module) -> int | None:
    """The first positive int found for `field` in spec, module.config, then the module's attributes."""
    config = getattr(module, "config", None)
    for place in (spec, config, module):
        for name in SPEC_NAMES[field]:
            value = place.get(name) if isinstance(place, dict) else getattr(place, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _spec_dict(spec: CausalLMSpec | EncoderSpec | dict | None) -> dict:
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    return {f.name: getattr(spec, f.name) for f in fields(spec)}


def _missing(field: str, kind: str) -> ContractError:
    names = ", ".join(SPEC_NAMES[field])
    return ContractError(f"cannot tell the {kind} module's {field}: give it, e.g. spec={{'{field}': ...}}, or set "
                         f"one of these attributes on the module or its .config: {names}")


def causal_lm_spec(module: torch.nn.Module, spec: CausalLMSpec | dict | None, vocab_size: int | None) -> CausalLMSpec:
    """The spec from what is given, else the module's (or its config's) attributes; vocab from the probe's logits."""
    given = _spec_dict(spec)
    values = {f: _lookup(f, given, module) for f in ("num_layers", "num_kv_heads", "head_dim", "max_positions")}
    if values["num_kv_heads"] is None:  # no grouped-query attention: one kv head per query head
        values["num_kv_heads"] = _lookup("num_heads", given, module)
    if values["head_dim"] is None:
        heads, hidden = _lookup("num_heads", given, module), _lookup("hidden_size", given, module)
        values["head_dim"] = hidden // heads if heads and hidden and hidden % heads == 0 else None
    values["vocab_size"] = _lookup("vocab_size", given, module) or vocab_size
    for field, value in values.items():
        if value is None:
            raise _missing(field, "causal-lm")
    return CausalLMSpec(**values)


# --- causal-lm -----------------------------------------------------------------------------------------------

def _kv_problem(where: str, pair: Any, batch: int, spec: CausalLMSpec, length: int, label: str) -> str | None:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        return f"{where} is {type(pair).__name__}; expected a (key, value) pair of tensors"
    for part, tensor in zip(("key", "value"), pair):
        want = (batch, spec.num_kv_heads, length, spec.head_dim)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != want:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            return (f"{where} {part} has shape {shape}; expected (batch={batch}, kv_heads={spec.num_kv_heads}, "
                    f"{label}={length}, head_dim={spec.head_dim})")
    return None


def _causal_step(forward: Callable, spec: CausalLMSpec, ids: torch.Tensor, past: list, past_len: int,
                 step: str, mask: torch.Tensor | None = None, positions: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, list]:
    """One forward call, its outputs checked against the contract; a ContractError says which part is wrong."""
    batch, seq = ids.shape
    mask = torch.ones(batch, past_len + seq, dtype=torch.int64) if mask is None else mask
    if positions is None:
        positions = torch.arange(past_len, past_len + seq).expand(batch, seq).contiguous()
    try:
        out = forward(ids, mask, positions, past)
    except Exception as e:
        raise ContractError(f"causal-lm forward failed at {step} (input_ids {tuple(ids.shape)}, attention_mask "
                            f"{tuple(mask.shape)}, position_ids {tuple(positions.shape)}, past of {len(past)} layers "
                            f"of length {past_len}): {type(e).__name__}: {e}; it must be forward(input_ids, "
                            "attention_mask, position_ids, past) -> (logits, present)") from e
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ContractError(f"causal-lm forward returned {type(out).__name__} at {step}; expected a pair "
                            "(logits, present)")
    logits, present = out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != (batch, seq):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ContractError(f"logits at {step} have shape {shape}; expected (batch={batch}, seq={seq}, vocab)")
    if spec.vocab_size and logits.shape[-1] != spec.vocab_size:  # 0: not known yet
        raise ContractError(f"logits at {step} have {logits.shape[-1]} entries per position; the spec says "
                            f"vocab_size={spec.vocab_size}")
    if not isinstance(present, (tuple, list)) or len(present) != spec.num_layers:
        count = len(present) if isinstance(present, (tuple, list)) else type(present).__name__
        raise ContractError(f"present at {step} has {count} layers; expected a list of num_layers={spec.num_layers} "
                            "(key, value) pairs")
    for i, pair in enumerate(present):
        if problem := _kv_problem(f"present[{i}]", pair, batch, spec, past_len + seq, "past+seq"):
            raise ContractError(f"{problem} at {step}")
    return logits, [tuple(pair) for pair in present]


@torch.no_grad()
def check_causal_lm(forward: Callable, spec: CausalLMSpec, prompt: list[int]) -> None:
    """Probe the contract on batch 2: a 3-token prefill (empty past), a decode step on its present equal to a
    4-token prefill (the cache is used), and a left-padded row equal to the row alone (the mask is used)."""
    tokens = (prompt * 4)[:4]
    ids = torch.tensor([tokens, tokens[::-1]], dtype=torch.int64)
    empty = [(torch.zeros(2, spec.num_kv_heads, 0, spec.head_dim),) * 2 for _ in range(spec.num_layers)]
    _, present = _causal_step(forward, spec, ids[:, :3], empty, 0, "prefill (empty past)")
    decoded, _ = _causal_step(forward, spec, ids[:, 3:], present, 3, "decode (past of 3)")
    full, _ = _causal_step(forward, spec, ids, empty, 0, "prefill of 4 tokens")
    diff = float((decoded[:, -1] - full[:, -1]).abs().max())
    scale = float(full.abs().max()) or 1.0
    if not diff <= 1e-4 * max(scale, 1.0):
        raise ContractError(f"decoding one token with the past of 3 gives logits {diff:.3g} away from prefilling all "
                            "4 tokens at once; the forward must attend to past's keys/values (concatenated before "
                            "its own) and place the new token at position_ids")
    empty1 = [(torch.zeros(1, spec.num_kv_heads, 0, spec.head_dim),) * 2 for _ in range(spec.num_layers)]
    alone, _ = _causal_step(forward, spec, ids[1:, :2], empty1, 0, "prefill of 2 tokens")
    padded = torch.cat([ids[:1], torch.cat([torch.zeros(1, 2, dtype=torch.int64), ids[1:, :2]], 1)])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3], [0, 0, 0, 1]])
    batched, _ = _causal_step(forward, spec, padded, empty, 0, "a left-padded batch", mask, positions)
    diff = float((batched[1, -1] - alone[0, -1]).abs().max())
    if not diff <= 1e-4 * max(float(alone.abs().max()), 1.0):
        raise ContractError(f"a row left-padded by 2 (attention_mask [0, 0, 1, 1], position_ids [0, 0, 0, 1]) gives "
                            f"logits {diff:.3g} away from the row alone; the forward must hide the keys where "
                            "attention_mask is 0 and take positions from position_ids")


@torch.no_grad()
def _probe_vocab(module: torch.nn.Module, spec: CausalLMSpec, token: int) -> int:
    """The vocabulary size read off the logits of a 1-token prefill with an empty past."""
    empty = [(torch.zeros(1, spec.num_kv_heads, 0, spec.head_dim),) * 2 for _ in range(spec.num_layers)]
    logits, _ = _causal_step(module.forward, replace(spec, vocab_size=0), torch.tensor([[token]]), empty, 0,
                             "prefill of 1 token (reading vocab_size off the logits)")
    return int(logits.shape[-1])


def _causal_source(module: torch.nn.Module, *, name: str, source: str, digest: str, inputs: Inputs | None,
                   tokenizer: BundleTokenizer | None, spec: Any, held_out: Inputs | None, notes: list[str],
                   pooling: str | dict | None = None, eos_token_ids: Sequence[int] | None = None) -> ExportSource:
    if pooling is not None:
        raise EdgetxError("pooling is an encoder setting; a causal-lm has none")
    if inputs is None and tokenizer is None:
        raise EdgetxError("without a tokenizer, give the golden prompts as token ids: inputs=[[...], [...]] "
                          "(at least 2, so that a padded batch is checked too)")
    sentences = docstring_sentences(120) if tokenizer is not None else []
    prompts = token_ids(inputs if inputs is not None else [" ".join(sentences[:5]), sentences[8]], tokenizer, "inputs")
    if len(prompts) < 2:
        raise EdgetxError("give at least 2 golden prompts: parity checks a left-padded batch of them as well")
    probe_vocab = None
    if _lookup("vocab_size", _spec_dict(spec), module) is None:
        probe_vocab = _probe_vocab(module, causal_lm_spec(module, {**_spec_dict(spec), "vocab_size": 1}, None),
                                   prompts[0][0])
    spec = causal_lm_spec(module, spec, probe_vocab)
    if probe_vocab is not None:
        notes.append(f"vocab_size {spec.vocab_size} read from the logits")
    limit = spec.max_positions - GOLDEN_DECODE_STEPS - 1  # the first prompt and its decode steps must fit
    if limit < 1:
        raise EdgetxError(f"max_positions {spec.max_positions} leaves no room for a prompt and the "
                          f"{GOLDEN_DECODE_STEPS} golden decode steps")
    prompts = [p[:limit] for p in prompts]
    bad = sorted({t for p in prompts for t in p if not 0 <= t < spec.vocab_size})
    if bad:
        raise EdgetxError(f"golden prompts hold token ids {bad[:5]} outside the vocabulary [0, {spec.vocab_size})")
    check_causal_lm(module.forward, spec, prompts[0])

    if held_out is not None:
        seqs = token_ids(held_out, tokenizer, "held_out")
        eval_ids, calib_ids = seqs[: max(1, len(seqs) // 2)], seqs[max(1, len(seqs) // 2):] or seqs[:1]
    elif tokenizer is not None:  # held-out docstring prose, none of it in the default golden prompts
        eval_ids = [tokenizer.encode(" ".join(sentences[i: i + 10])) for i in range(40, 80, 10)]
        calib_ids = [tokenizer.encode(" ".join(sentences[i: i + 5])) for i in range(80, 120, 5)]
    else:
        eval_ids = calib_ids = []
        notes.append("no held-out data (held_out=...): no quantized variants")
    eval_ids = [s[: min(256, spec.max_positions - 1)] for s in eval_ids]
    calib_ids = [s[: min(128, spec.max_positions - 1)] for s in calib_ids]
    block = tokenizer_block(tokenizer, notes, eos_token_ids)
    if not block["eos_token_ids"]:
        notes.append("no end-of-sequence token ids known (eos_token_ids=...): generation stops at its length limit")
    texts = [tokenizer.backend.decode(p) if tokenizer is not None else " ".join(map(str, p)) for p in prompts]
    return causal_lm_source(
        export_hint=MODULE_EXPORT_HINT,
        name=name, module=module, forward=module.forward, spec=spec, prompts=prompts, prompt_texts=texts,
        eval_ids=eval_ids, calib_ids=calib_ids,
        facts={"architecture": type(module).__name__, "parameters": sum(p.numel() for p in module.parameters())},
        tokenizer=block, source=source, source_sha256=digest,
        extra_files=tokenizer_files(tokenizer), notes=notes)


# --- encoder -------------------------------------------------------------------------------------------------

class _EncoderContract(torch.nn.Module):
    """The user's `forward(input_ids, attention_mask[, token_type_ids]) -> last_hidden_state` seen through the
    keyword interface the encoder exporter and golden capture call (`.last_hidden_state` of the result)."""

    def __init__(self, module: torch.nn.Module, input_names: tuple[str, ...]):
        super().__init__()
        self.module, self.input_names = module, input_names

    def forward(self, return_dict: bool = True, **tensors: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.module(*(tensors[n] for n in self.input_names)))


def encoder_inputs(module: torch.nn.Module) -> tuple[str, ...]:
    """input_ids, attention_mask, and token_type_ids when the forward has a parameter of that name."""
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        parameters = {}
    return ("input_ids", "attention_mask") + (("token_type_ids",) if "token_type_ids" in parameters else ())


@torch.no_grad()
def check_encoder(module: torch.nn.Module, names: tuple[str, ...], ids: list[int]) -> int:
    """Probe the contract on a padded batch of 2; returns the hidden size."""
    tokens = (ids * 5)[:5]
    feeds = {"input_ids": torch.tensor([tokens, tokens[:3] + [0, 0]]),
             "attention_mask": torch.tensor([[1] * 5, [1] * 3 + [0] * 2]),
             "token_type_ids": torch.zeros(2, 5, dtype=torch.int64)}
    call = ", ".join(f"{n} (2, 5)" for n in names)
    try:
        out = module(*(feeds[n] for n in names))
    except Exception as e:
        raise ContractError(f"encoder forward({call}) failed: {type(e).__name__}: {e}; it must be "
                            f"forward({', '.join(names)}) -> last_hidden_state (batch, seq, hidden)") from e
    if not isinstance(out, torch.Tensor):
        raise ContractError(f"encoder forward returned {type(out).__name__}; expected the last_hidden_state tensor "
                            "(batch, seq, hidden) alone")
    if out.dim() != 3 or tuple(out.shape[:2]) != (2, 5):
        raise ContractError(f"last_hidden_state has shape {tuple(out.shape)}; expected (batch=2, seq=5, hidden)")
    alone = module(*(feeds[n][1:, :3] for n in names))
    diff = float((alone[0] - out[1, :3]).abs().max())
    if not diff <= 1e-4 * max(float(out.abs().max()), 1.0):
        raise ContractError(f"a sentence padded to 5 tokens gives hidden states {diff:.3g} away from the same sentence "
                            "alone; the forward must mask the keys where attention_mask is 0")
    return int(out.shape[-1])


def pooling_config(pooling: str | dict | None) -> dict:
    """{"mode": mean | cls | max, "normalize": bool} from a mode name or such a dict (default: mean, unnormalized)."""
    config = {"mode": pooling} if isinstance(pooling, str) else dict(pooling or {"mode": "mean"})
    config.setdefault("mode", "mean")
    config.setdefault("normalize", False)
    if (config["mode"] not in POOLING_MODES or not isinstance(config["normalize"], bool)
            or set(config) - {"mode", "normalize"}):
        raise EdgetxError(f"pooling {pooling!r}: give one of {', '.join(POOLING_MODES)}, or "
                          "{'mode': 'mean', 'normalize': True}")
    return {**config, "from": "build(pooling=...)" if pooling is not None else "default (mean)"}


def _padded(seqs: list[list[int]], types: list[list[int]] | None, pad: int, names: tuple[str, ...], prefix: str
            ) -> dict[str, np.ndarray]:
    width = max(len(s) for s in seqs)
    arrays = {"input_ids": np.full((len(seqs), width), pad, np.int64),
              "attention_mask": np.zeros((len(seqs), width), np.int64),
              "token_type_ids": np.zeros((len(seqs), width), np.int64)}
    for row, ids in enumerate(seqs):
        arrays["input_ids"][row, : len(ids)], arrays["attention_mask"][row, : len(ids)] = ids, 1
        if types is not None:
            arrays["token_type_ids"][row, : len(ids)] = types[row]
    return {f"{prefix}{n}": arrays[n] for n in names}


def _encoder_source(module: torch.nn.Module, *, name: str, source: str, digest: str, inputs: Inputs | None,
                    tokenizer: BundleTokenizer | None, spec: Any, held_out: Inputs | None, notes: list[str],
                    pooling: str | dict | None = None, eos_token_ids: Sequence[int] | None = None) -> ExportSource:
    given = _spec_dict(spec)
    max_positions = _lookup("max_positions", given, module)
    if max_positions is None:
        raise _missing("max_positions", "encoder")
    pooling = pooling_config(pooling)
    names = encoder_inputs(module)
    pad = tokenizer.block["pad_token_id"] if tokenizer is not None else 0

    def encode(items: Inputs, what: str) -> tuple[list[list[int]], list[list[int]] | None]:
        if tokenizer is not None and all(isinstance(i, str) for i in items):
            return tokenizer.encode_batch(list(items), max_positions)
        return [s[:max_positions] for s in token_ids(items, tokenizer, what)], None

    if inputs is None and tokenizer is None:
        raise EdgetxError("without a tokenizer, give the golden sentences as token ids: inputs=[[...], [...], ...]")
    sentences = docstring_sentences(136) if tokenizer is not None else []
    golden_ids, golden_types = encode(inputs if inputs is not None else sentences[:32], "inputs")
    if len(golden_ids) < 2:
        raise EdgetxError("give at least 2 golden sentences: parity checks a padded batch of them")
    hidden = check_encoder(module, names, golden_ids[0])
    vocab = _lookup("vocab_size", given, module)
    if vocab is None:
        embedding = next((m for m in module.modules() if isinstance(m, torch.nn.Embedding)), None)
        if embedding is None:
            raise _missing("vocab_size", "encoder")
        vocab = embedding.num_embeddings
        notes.append(f"vocab_size {vocab} read from the module's first nn.Embedding")
    spec = EncoderSpec(input_names=names, hidden_size=hidden, vocab_size=vocab, max_positions=max_positions)
    wrapped = _EncoderContract(module, names).eval()
    batch = _padded(golden_ids, golden_types, pad, names, "")
    held = held_out if held_out is not None else sentences[40:136] if tokenizer is not None else None
    quant_data = None
    if held is not None:
        held_ids, held_types = encode(held, "held_out")
        half = max(1, len(held_ids) * 2 // 3)
        data = _padded(held_ids[:half], held_types and held_types[:half], pad, names, "eval.")
        data.update(_padded(held_ids[half:] or held_ids[:1], held_types and (held_types[half:] or held_types[:1]),
                            pad, names, "calib."))
        quant_data = lambda: data  # noqa: E731
    else:
        notes.append("no held-out data (held_out=...): no quantized variants")
    texts = list(inputs) if inputs is not None and all(isinstance(i, str) for i in inputs) else \
        [" ".join(map(str, s)) for s in golden_ids] if inputs is not None else sentences[:32]
    return ExportSource(
        export_hint=MODULE_EXPORT_HINT,
        name=name, kind="encoder",
        model={"name": name, "kind": "encoder", "architecture": type(module).__name__, "hidden_size": hidden,
               "vocab_size": vocab, "max_positions": max_positions, "pooling": pooling,
               "parameters": sum(p.numel() for p in module.parameters())},
        tokenizer=tokenizer_block(tokenizer, notes, eos_token_ids), io=spec.io_signature(),
        export=lambda path, opset: export_encoder(wrapped, spec, path, opset),
        capture_golden=lambda: (capture_encoder_golden(wrapped, spec, batch, pooling), {"sentences": texts}),
        quant_data=quant_data, source=source, source_sha256=digest, extra_files=tokenizer_files(tokenizer),
        notes=notes, module=module,
        run_torch=lambda feeds: module(*(torch.tensor(np.array(feeds[n])) for n in names)))


# --- one entry for every kind --------------------------------------------------------------------------------

# kind name -> (module, settings) -> ExportSource. A kind without an entry here cannot come in as an nn.Module.
MODULE_EXPORTERS: dict[str, Callable[..., ExportSource]] = {"causal-lm": _causal_source, "encoder": _encoder_source}

def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes and values), in order."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def module_source(module: torch.nn.Module, *, kind: str | None = None, inputs: Inputs | None = None,
                  tokenizer: Any = None, spec: CausalLMSpec | EncoderSpec | dict | None = None, pooling: str | dict | None = None,
                  held_out: Inputs | None = None, eos_token_ids: Sequence[int] | None = None,
                  name: str | None = None, source: str | None = None) -> ExportSource:
    """An ExportSource for a plain nn.Module of a registered kind, its contract checked by a probe first."""
    if not isinstance(module, torch.nn.Module):
        raise EdgetxError(f"expected a torch.nn.Module, got {type(module).__name__}")
    registered = known_kinds()
    if kind not in registered:
        said = "no model kind given" if kind is None else f"model kind {kind!r} is not registered"
        raise EdgetxError(f"{said}; say which kind the module is: kind={' or '.join(map(repr, registered))} "
                          f"(edgetx build: --kind, or the factory's settings)")
    if kind not in MODULE_EXPORTERS:
        raise EdgetxError(f"model kind {kind!r} is registered but has no nn.Module exporter (those with one: "
                          f"{', '.join(MODULE_EXPORTERS)}); build an edgetx.exporters.source.ExportSource for it")
    notes = [] if not module.training else ["module put in eval mode"]
    module.eval()
    cls = type(module)
    return MODULE_EXPORTERS[kind](
        module, name=name or cls.__name__, source=source or f"{cls.__module__}.{cls.__qualname__}",
        digest=state_sha256(module), inputs=inputs, tokenizer=bundle_tokenizer(tokenizer, eos_token_ids),
        spec=spec, pooling=pooling, held_out=held_out, eos_token_ids=eos_token_ids, notes=notes)


