"""A stand-alone onnxruntime worker: loads one model and runs it on request over stdin/stdout.

Run by the out-of-process backends (e.g. ARM64 under QEMU, the QNN / OpenVINO / XNNPACK vendor
runtimes) with any Python that has numpy and onnxruntime; it imports nothing from edgetx but
`wire.py`, `ort_options.py` and `onnx_nodes.py`, which sit beside it.

Optional fields of the load request (absent = the CPU execution provider, as before):
- "providers": [[name, {option: value}], ...] execution providers in priority order;
- "plugin_ep": {"name", "library", "options"}: register a plugin EP library
  (ort.register_execution_provider_library) and add its devices with these options;
- "placement": true: also report where each node runs. The graph after onnxruntime's basic
  optimizations (what execution providers are offered) is saved by a CPU-only session and read;
  a session with the providers at that level logs its "Node placements" verbosely to stderr,
  which is captured and parsed: nodes listed on the CPU EP by name ran there, the rest were
  taken by the provider (compiled partitions are listed as one fused node each). Lines in which
  a provider says why it declined a node are returned as "messages".
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wire  # noqa: E402  (found beside this file, also under emulation where edgetx is not installed)
from ort_options import session_options  # noqa: E402  (likewise)


_REGISTERED: set[str] = set()


def _options(request: dict, level: str | None):
    import onnxruntime as ort

    return session_options(ort, request.get("threads"), level, request.get("extra"))


def _session(request: dict, options, cpu_only: bool = False):
    """An InferenceSession with the request's providers (or the plugin EP's devices)."""
    import onnxruntime as ort

    plugin = request.get("plugin_ep")
    if plugin and not cpu_only:
        if plugin["name"] not in _REGISTERED:
            ort.register_execution_provider_library(plugin["name"], plugin["library"])
            _REGISTERED.add(plugin["name"])
        devices = [d for d in ort.get_ep_devices() if d.ep_name == plugin["name"]]
        if not devices:
            raise RuntimeError(f"{plugin['name']} registered from {plugin['library']} but offers no device")
        options.add_provider_for_devices(devices, {k: str(v) for k, v in (plugin.get("options") or {}).items()})
        return ort.InferenceSession(request["model"], options)
    providers = ["CPUExecutionProvider"] if cpu_only else \
        [tuple(p) if isinstance(p, list) else p for p in request.get("providers") or ["CPUExecutionProvider"]]
    return ort.InferenceSession(request["model"], options, providers=providers)


def load(request: dict):
    return _session(request, _options(request, request.get("graph_optimization")))


_PLACED = re.compile(r"(?:All nodes|Node\(s\)) placed on \[(\w+)\]\. Number of nodes: (\d+)")
_NODE = re.compile(r"^\s+(\S+) \((.*)\)$")
_DECLINED = re.compile(r"not supported|unsupported", re.IGNORECASE)


def _log_text(line: str) -> str:
    """The message of an onnxruntime log line (after "file.cc:123 Function] "), else the line."""
    head, sep, rest = line.partition("] ")
    return rest if sep and head.lstrip("\x1b[0;93m").startswith("20") else line


def parse_placement(log: str) -> tuple[dict, list[str]]:
    """({ep: [(op_type, name), ...] or {"all": count}}, provider messages) from a verbose session log."""
    placed: dict = {}
    messages: list[str] = []
    current = None
    in_block = False
    lines = log.splitlines()
    for i, raw in enumerate(lines):
        text = _log_text(raw.rstrip())
        if "Schema error" in raw:
            continue
        if "VerifyEachNodeIsAssignedToAnEp" in raw:
            in_block = True
            match = _PLACED.search(text)
            if match:
                current = match.group(1)
                placed[current] = {"all": int(match.group(2))} if text.lstrip().startswith("All nodes") else []
                continue
            node = _NODE.match(text)
            if node and isinstance(placed.get(current), list):
                placed[current].append((node.group(1), node.group(2)))
            continue
        if in_block:
            current = None
        if "Validation FAILED" in text or (_DECLINED.search(text) and raw[:1] not in ("\t", " ")):
            more = []  # continuation lines (tab-indented) belong to this message, e.g. QNN's "REASON : ..."
            for follow in lines[i + 1 : i + 6]:
                if not follow.strip() or not follow.startswith(("\t", " ")):
                    break
                more.append(follow.strip())
            messages.append(" ".join([text.strip(), *more]))
    return placed, list(dict.fromkeys(m for m in messages if m))[:300]


def placement(request: dict) -> dict:
    """Where each node of the model runs with the request's providers (see the module docstring)."""
    import os
    import tempfile

    from onnx_nodes import read_nodes

    level = "disabled" if request.get("graph_optimization") == "disabled" else "basic"
    with tempfile.TemporaryDirectory(prefix="edgetx-placement-") as tmp:
        basic = os.path.join(tmp, "basic.onnx")
        options = _options(request, level)
        options.optimized_model_filepath = basic
        _session(request, options, cpu_only=True)
        nodes = read_nodes(basic)
        log_path = os.path.join(tmp, "session.log")
        options = _options(request, level)
        options.log_severity_level = 0
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(log_path, "wb") as log:
                os.dup2(log.fileno(), 2)
                try:
                    _session(request, options)
                finally:
                    os.dup2(saved, 2)
        finally:
            os.close(saved)
        with open(log_path, "rb") as f:
            placed, messages = parse_placement(f.read().decode("utf-8", "replace"))
    by_name = {n["name"]: n for n in nodes}
    where: dict[str, str] = {}
    compiled: dict[str, int] = {}
    for ep, listed in placed.items():
        if isinstance(listed, dict):  # "All nodes placed on [ep]"
            where.update({n["name"]: ep for n in nodes})
            if ep != "CPUExecutionProvider" and listed["all"] != len(nodes):
                compiled[ep] = listed["all"]
            continue
        for op_type, name in listed:
            if name in by_name:
                where[name] = ep
            elif ep != "CPUExecutionProvider":
                compiled[ep] = compiled.get(ep, 0) + 1
    inside = next(iter(compiled), None)  # nodes not listed by name went into a compiled partition
    for node in nodes:
        where.setdefault(node["name"], inside or "unknown")
    # Partitions: each compiled node, plus connected groups of nodes a provider took one by one.
    listed = {name: ep for ep, names in placed.items() if isinstance(names, list) for _, name in names}
    claimed = {n["name"] for n in nodes if listed.get(n["name"], "CPUExecutionProvider") != "CPUExecutionProvider"}
    if not compiled:  # "All nodes placed on [ep]" with one entry per node: each was taken one by one
        claimed |= {n["name"] for n in nodes if where[n["name"]] not in ("CPUExecutionProvider", "unknown")}
    producer = {out: n["name"] for n in nodes for out in n["outputs"] if out}
    parent = {name: name for name in claimed}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for node in nodes:
        if node["name"] not in claimed:
            continue
        for tensor in node["inputs"]:
            source = producer.get(tensor)
            if source in claimed and where[source] == where[node["name"]]:
                parent[find(source)] = find(node["name"])
    groups = len({find(name) for name in claimed})
    return {"level": level, "nodes": [[("" if n["domain"] in ("", "ai.onnx") else n["domain"] + ".") + n["op_type"],
                                       n["name"], where[n["name"]]] for n in nodes],
            "compiled": compiled, "partitions": sum(compiled.values()) + groups, "messages": messages}


def serve(stdin, stdout) -> None:
    state = {}

    def handle(request: dict, arrays: dict) -> tuple[dict, dict]:
        if request["op"] == "load":
            import platform

            import onnxruntime as ort

            session = state["session"] = load(request)
            reply = {"outputs": [o.name for o in session.get_outputs()], "runtime": f"onnxruntime {ort.__version__}",
                     "machine": platform.machine(), "providers": session.get_providers()}
            if request.get("placement"):
                reply["placement"] = placement(request)
            return reply, {}
        if request["op"] == "run":
            session = state.get("session")
            if session is None:
                raise RuntimeError("run before load")
            names = request.get("outputs") or [o.name for o in session.get_outputs()]
            start = time.perf_counter()
            values = session.run(names, arrays)
            return {"seconds": time.perf_counter() - start}, dict(zip(names, values))
        raise ValueError(f"unknown op {request['op']!r}")

    wire.serve(stdin, stdout, handle)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
