"""Driving a causal-LM graph: its inputs, its KV cache, and the prefill-then-decode loop.

The graph contract (README, "Causal-LM graph contract"): one graph serves prefill and decode; inputs
`input_ids`, `attention_mask` (past+seq), `position_ids`, `past_key_values.{i}.key|value` (the past may be
empty) and optionally `logits_to_keep`; outputs `logits` and `present.{i}.key|value`. `DecodeLoop` is the one
place that carries the cache from step to step; the Generator, parity, the gates, bench, graph selection
and fixed-shape checks all run through it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
Feeds = dict[str, np.ndarray]


def contract_problem(inputs: list[dict], outputs: list[dict]) -> str | None:
    """What in an I/O signature breaks the causal-LM graph contract, or None."""
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
                 logits_to_keep: int = 0) -> Feeds:
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


class DecodeLoop:
    """A causal LM run step by step with its own KV cache: `prefill` a prompt, then `step` one token at a
    time; `feeds` / `advance` split a step in two for callers that time the run alone (bench).

    `run(feeds)` returns the outputs by name: an edgetx Session's `run`, or a raw backend session's.
    """

    def __init__(self, run: Callable[[Feeds], dict[str, np.ndarray]], inputs: list[dict], batch: int = 1,
                 cache: dict[str, np.ndarray] | None = None):
        self.run, self.inputs = run, inputs
        self.cache = empty_cache(inputs, batch) if cache is None else cache

    @property
    def past(self) -> int:
        """Positions in the cache."""
        return next(iter(self.cache.values())).shape[2] if self.cache else 0

    def feeds(self, ids: np.ndarray, logits_to_keep: int = 0) -> Feeds:
        return causal_feeds(self.inputs, ids, cache=self.cache, logits_to_keep=logits_to_keep)

    def advance(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Take a step's presents as the cache; returns the outputs."""
        self.cache = next_cache(outputs, self.cache)
        return outputs

    def prefill(self, ids: np.ndarray, logits_to_keep: int = 0) -> dict[str, np.ndarray]:
        """Run `ids` (batch, seq) on top of the cache (empty at first)."""
        return self.advance(self.run(self.feeds(np.asarray(ids, dtype=np.int64), logits_to_keep)))

    def step(self, tokens: int | list[int]) -> dict[str, np.ndarray]:
        """One new token per row."""
        return self.prefill(np.array(tokens, dtype=np.int64).reshape(-1, 1))

    def truncate(self, length: int) -> None:
        """Keep the cache's first `length` positions (a rejected draft, a chat turn rendered otherwise)."""
        self.cache = {name: value[:, :, :length] for name, value in self.cache.items()}


class BoundDecodeLoop(DecodeLoop):
    """`DecodeLoop` on a cache the backend keeps bound between runs (edgetx.runtimes.backend.CacheBinding): a step
    feeds its new tokens only and copies no cache. Same graph contract, same numbers."""

    def __init__(self, binding, inputs: list[dict]):
        super().__init__(binding.run, inputs, cache={})
        self.binding = binding
        self._keep = any(s["name"] == "logits_to_keep" for s in inputs)

    @property
    def past(self) -> int:
        return self.binding.past

    def prefill(self, ids: np.ndarray, logits_to_keep: int = 0) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, dtype=np.int64)
        batch, seq = ids.shape
        past = self.binding.past
        feeds = {"input_ids": ids, "attention_mask": np.ones((batch, past + seq), np.int64),
                 "position_ids": np.broadcast_to(np.arange(past, past + seq, dtype=np.int64), ids.shape)}
        if self._keep:
            feeds["logits_to_keep"] = np.array(logits_to_keep, dtype=np.int64)
        return self.binding.run(feeds, ["logits"]).outputs

    def feeds(self, ids: np.ndarray, logits_to_keep: int = 0) -> Feeds:
        raise TypeError("a bound cache is run through prefill/step, not with feeds built outside it")

    def truncate(self, length: int) -> None:
        self.binding.truncate(length)


def decode_loop(session, capacity: int | None = None, bind: bool = True) -> DecodeLoop:
    """A loop over `session` (an edgetx Session): on a cache bound to its backend where the backend can keep one
    (`capacity` positions preallocated where the graph writes in place), else with the cache passed as arrays."""
    binding = session.bind_cache(capacity) if bind and hasattr(session, "bind_cache") else None
    return BoundDecodeLoop(binding, session.inputs) if binding is not None else DecodeLoop(session.run, session.inputs)


def cache_specs(inputs: list[dict], batch: int = 1) -> dict:
    """Each past input's present output, empty shape and dtype (edgetx.runtimes.backend.CacheSpec)."""
    from edgetx.runtimes.backend import CacheSpec

    return {s["name"]: CacheSpec(PRESENT_PREFIX + s["name"][len(PAST_PREFIX):],
                                 tuple(batch if d == "batch" else 0 if d == "past" else d for d in s["shape"]), s["dtype"])
            for s in inputs if s["name"].startswith(PAST_PREFIX)}


def shares_cache_buffer(graph) -> bool:
    """Whether every past input of an ONNX graph (a GraphProto) is read only by fused GroupQueryAttention, as its past
    key or value, whose present key or value is the matching present output: then past and present can be one
    buffer that the kernel writes in place (edgetx.runtimes.ort_cpu.binding)."""
    pasts = [v.name for v in graph.input if v.name.startswith(PAST_PREFIX)]
    if not pasts:
        return False
    outputs = {v.name for v in graph.output}
    readers: dict[str, list[tuple[object, int]]] = {name: [] for name in pasts}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in readers:
                readers[name].append((node, index))
    for name in pasts:
        present = PRESENT_PREFIX + name[len(PAST_PREFIX):]
        if present not in outputs or len(readers[name]) != 1:
            return False
        node, index = readers[name][0]
        if node.op_type != "GroupQueryAttention" or node.domain != "com.microsoft" or index not in (3, 4):
            return False
        if len(node.output) <= index - 2 or node.output[index - 2] != present:
            return False
    return True


def greedy(run: Callable[[Feeds], dict[str, np.ndarray]], inputs: list[dict], prompt: np.ndarray,
           steps: int, loop: DecodeLoop | None = None) -> tuple[list[int], np.ndarray, dict[str, np.ndarray]]:
    """Greedy decoding of a one-row `prompt` with the graph's own cache, `steps` decode steps: (the steps + 1
    tokens picked — the prompt's argmax first, fed back one per step, and the last step's pick —, the
    last-position logits of each step, the prompt's outputs). The first token fed is the prompt's own
    argmax, as PyTorch's golden decode does. `loop`: run through that loop instead (a cache bound to the backend)."""
    loop = loop or DecodeLoop(run, inputs)
    first = loop.prefill(prompt)
    picks, step_logits = [int(first["logits"][0, -1].argmax())], []
    for _ in range(steps):
        logits = loop.step(picks[-1])["logits"][0, -1]
        step_logits.append(logits)
        picks.append(int(logits.argmax()))
    return picks, np.stack(step_logits) if step_logits else np.zeros((0, 0), np.float32), first
