"""Graph inputs built from a manifest's I/O signature: the KV cache and causal-LM / encoder feeds.

One place for it, shared by the Generator, parity, optimization timing and quantization gates.
"""

from __future__ import annotations

import numpy as np

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."


def causal_contract_problem(inputs: list[dict], outputs: list[dict]) -> str | None:
    """What in an I/O signature breaks the causal-LM graph contract (README), or None."""
    by_name, out_names = {s["name"]: s for s in inputs}, {s["name"] for s in outputs}
    for name in ("input_ids", "attention_mask", "position_ids"):
        spec = by_name.get(name)
        if spec is None or spec["dtype"] != "int64" or len(spec["shape"]) != 2:
            return f"input {name!r} must be int64 of rank 2"
    if "logits" not in out_names:
        return "no 'logits' output"
    for name, spec in by_name.items():
        if name.startswith(PAST_PREFIX):
            shape = spec["shape"]
            if len(shape) != 4 or shape[0] != "batch" or shape[2] != "past" or not all(
                    isinstance(d, int) for d in (shape[1], shape[3])):
                return f"cache input {name!r} must have shape [batch, heads, past, head_dim], not {shape}"
            if PRESENT_PREFIX + name[len(PAST_PREFIX):] not in out_names:
                return f"cache input {name!r} has no matching {PRESENT_PREFIX}* output"
    return None


def empty_cache(inputs: list[dict], batch: int) -> dict[str, np.ndarray]:
    """Zero-length past keys/values for every cache input of an I/O signature."""
    return {s["name"]: np.zeros([batch if d == "batch" else 0 if d == "past" else d for d in s["shape"]],
                                dtype=s["dtype"])
            for s in inputs if s["name"].startswith(PAST_PREFIX)}


def next_cache(outputs: dict[str, np.ndarray], cache: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The presents a step returned, renamed as the next step's past."""
    return {name: outputs[PRESENT_PREFIX + name[len(PAST_PREFIX):]] for name in cache}


def causal_feeds(inputs: list[dict], input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                 position_ids: np.ndarray | None = None, cache: dict[str, np.ndarray] | None = None,
                 logits_to_keep: int = 0) -> dict:
    """Causal-LM inputs: no mask = all ones, no positions = counting on from the cache's length,
    no cache = empty. `logits_to_keep` = 1 asks for the last position's logits only (a prompt run),
    on graphs that take it (edgetx.passes.logits_to_keep); 0 = every position."""
    past = next(iter(cache.values())).shape[2] if cache else 0
    if attention_mask is None:
        attention_mask = np.ones((input_ids.shape[0], past + input_ids.shape[1]), dtype=np.int64)
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(past, past + input_ids.shape[1], dtype=np.int64), input_ids.shape)
    if cache is None:
        cache = empty_cache(inputs, batch=input_ids.shape[0])
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
             "position_ids": np.ascontiguousarray(position_ids), **cache}
    if logits_to_keep and any(s["name"] == "logits_to_keep" for s in inputs):
        feeds["logits_to_keep"] = np.array(logits_to_keep, dtype=np.int64)
    return feeds


def encoder_feeds(inputs: list[dict], data: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """An encoder batch stored as `{prefix}.{input name}` arrays (golden.npz, quant.npz)."""
    return {s["name"]: data[f"{prefix}.{s['name']}"] for s in inputs}
