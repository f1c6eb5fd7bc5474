"""A causal LM's KV cache bound to an onnxruntime session (IOBinding), so decode steps copy no cache.

Two layouts, picked by the caller (edgetx.runtimes.session.Session.bind_cache):
- shared: one zeroed buffer per past input, `capacity` positions long, bound as both the past input and its present
  output. GroupQueryAttention writes the new positions into it in place and attends to the first
  `attention_mask`-many (onnxruntime's past/present buffer sharing, what onnxruntime-genai's
  `past_present_share_buffer` does); a run copies nothing of the cache. It grows (one copy) when a run would pass
  the end; pages never written are never touched (np.zeros maps them lazily).
- chained: the presents onnxruntime allocates are bound, as they are, as the next run's past. The graph still
  concatenates past and new positions, but no step copies the cache out to numpy and back.

IOBinding binds graph inputs only, not an input that has a stored default (an overridable initializer, such as the
optional `logits_to_keep`): a run that asks for fewer logits than it has positions (a prompt) goes through a plain
run on the cache so far, and its presents are taken into the binding; every other run is bound.
"""

from __future__ import annotations

import time

import numpy as np

from edgetx.errors import BackendError
from edgetx.runtimes.backend import CacheBinding, CacheSpec, RunResult

POSITIONS_AXIS = 2  # [batch, heads, positions, head_dim]


class OrtCacheBinding(CacheBinding):
    def __init__(self, session, model_path, cache: dict[str, CacheSpec], capacity: int | None):
        import onnxruntime as ort

        self._ort, self._session, self._model_path, self._cache = ort, session, model_path, cache
        self._binding = session.io_binding()
        self._bindable = {i.name for i in session.get_inputs()}
        self._held: dict[str, object] = {}  # arrays and values bound as inputs, kept alive while bound
        self._buffers: dict[str, np.ndarray] = {}  # shared layout: each past's whole buffer
        self.capacity = capacity
        self.past = 0
        self._bound_outputs: list[str] | None = None  # the outputs bound after the presents (bound once, kept)
        if capacity is not None:
            self._allocate(capacity)
        else:
            for name, spec in cache.items():
                self._bind_input(name, np.zeros(spec.shape, spec.dtype))

    def _bind_input(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._held[name] = array
        self._binding.bind_cpu_input(name, array)

    def _allocate(self, capacity: int) -> None:
        """Shared layout: buffers of `capacity` positions holding the cache so far, each bound as past and present."""
        for name, spec in self._cache.items():
            shape = list(spec.shape)
            shape[POSITIONS_AXIS] = capacity
            buffer = np.zeros(shape, spec.dtype)
            if name in self._buffers:
                buffer[:, :, : self.past] = self._buffers[name][:, :, : self.past]
            self._buffers[name] = buffer
            self._held[name] = self._ort.OrtValue.ortvalue_from_numpy(buffer)
            self._binding.bind_ortvalue_input(name, self._held[name])
        self.capacity = capacity
        self._bound_outputs = None  # the presents are new buffers: bind them again

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> RunResult:
        new = feeds["input_ids"].shape[1]
        if self.capacity is not None and self.past + new > self.capacity:
            self._allocate(max(self.past + new, 2 * self.capacity))
        unbound = [name for name in feeds if name not in self._bindable]
        if any(name != "logits_to_keep" for name in unbound):
            raise BackendError(f"{self._model_path}: input(s) {', '.join(unbound)} cannot be bound")
        if unbound and 0 < int(feeds["logits_to_keep"]) < new:
            return self._run_unbound(feeds, output_names)
        for name, value in feeds.items():
            if name in self._bindable:
                self._bind_input(name, value)
        binding = self._binding
        presents = [(name, spec.present) for name, spec in self._cache.items()]
        if self._bound_outputs != output_names:  # the in-place presents are bound once
            binding.clear_binding_outputs()
            for name, present in presents:  # bound first, so the outputs after them are the ones asked for
                if self.capacity is not None:
                    binding.bind_ortvalue_output(present, self._held[name])
                else:
                    binding.bind_output(present, "cpu")  # onnxruntime allocates each run's presents
            for name in output_names:
                binding.bind_output(name, "cpu")
            self._bound_outputs = list(output_names)
        else:  # what onnxruntime allocates is bound afresh (a value left from the last run would be written over)
            for name, present in presents if self.capacity is None else ():
                binding.bind_output(present, "cpu")
            for name in output_names:
                binding.bind_output(name, "cpu")
        started = time.perf_counter()
        try:
            self._session.run_with_iobinding(binding)
        except Exception as e:  # onnxruntime raises its own exception types; say where it came from
            raise BackendError(f"onnxruntime failed to run {self._model_path} with its KV cache bound: {e}") from e
        seconds = time.perf_counter() - started
        values = binding.get_outputs()
        if self.capacity is None:
            for (name, _), value in zip(presents, values):
                self._held[name] = value
                binding.bind_ortvalue_input(name, value)
        self.past += new
        asked = values[len(presents):]
        return RunResult({name: value.numpy() for name, value in zip(output_names, asked)}, seconds)

    def _past_arrays(self) -> dict[str, np.ndarray]:
        if self.capacity is not None:
            return {name: np.ascontiguousarray(buffer[:, :, : self.past]) for name, buffer in self._buffers.items()}
        return {name: held.numpy() if isinstance(held, self._ort.OrtValue) else held
                for name, held in ((name, self._held[name]) for name in self._cache)}

    def _run_unbound(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> RunResult:
        """A plain run on the cache so far (it takes `logits_to_keep`), its presents then taken into the binding."""
        presents = [spec.present for spec in self._cache.values()]
        started = time.perf_counter()
        try:
            values = self._session.run(presents + output_names, {**feeds, **self._past_arrays()})
        except Exception as e:
            raise BackendError(f"onnxruntime failed to run {self._model_path}: {e}") from e
        seconds = time.perf_counter() - started
        new = feeds["input_ids"].shape[1]
        for name, present in zip(self._cache, values):
            if self.capacity is not None:
                self._buffers[name][:, :, self.past : self.past + new] = present[:, :, self.past :]
            else:
                self._bind_input(name, present)
        self.past += new
        return RunResult(dict(zip(output_names, values[len(presents):])), seconds)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.past:
            raise ValueError(f"cannot keep {length} of the cache's {self.past} positions")
        if length == self.past:
            return
        if self.capacity is None:  # the presents onnxruntime made: cut them (a copy, only when a run is undone)
            for name in self._cache:
                held = self._held[name]
                array = held.numpy() if isinstance(held, self._ort.OrtValue) else held
                self._bind_input(name, array[:, :, :length])
        self.past = length  # shared layout: positions past `length` are overwritten by the next run
