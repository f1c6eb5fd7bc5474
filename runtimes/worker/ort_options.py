"""onnxruntime session options from edgetx's settings, in one place: the in-process CPU backend, the
out-of-process worker (which imports this file from beside it, under emulation too: standard library
only) and the offline-optimization pass all build their `SessionOptions` here."""

from __future__ import annotations

from typing import Any

# edgetx's names for onnxruntime's graph optimization levels.
GRAPH_OPTIMIZATION_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                             "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session_options(ort: Any, threads: int | None = None, graph_optimization: str | None = None,
                    extra: dict | None = None, log_severity: int = 3, memory_arena: bool = True) -> Any:
    """An `ort.SessionOptions` (`ort` is the onnxruntime module in use): `threads` intra-op threads (one
    inter-op thread), a graph optimization level by edgetx's name, session config entries, and errors-only
    logging by default (warnings about unused initializers are noise here). An unknown level is a ValueError."""
    options = ort.SessionOptions()
    options.log_severity_level = log_severity
    options.enable_cpu_mem_arena = memory_arena
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if graph_optimization:
        if graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(f"graph_optimization must be one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}, "
                             f"not {graph_optimization!r}")
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   GRAPH_OPTIMIZATION_LEVELS[graph_optimization])
    for key, value in (extra or {}).items():
        options.add_session_config_entry(key, str(value))
    return options
