"""Where does an ONNX graph part ways with the PyTorch module it was exported from?

Each PyTorch submodule's output (captured with forward hooks) is compared with the ONNX value
that leaves that module's scope (from the exporter's name-scope metadata), module by module in
execution order, one transformer block at a time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from edgetx.verify import metrics
from edgetx.passes.expose import expose_file
from edgetx.runtimes.backend import REFERENCE_BACKEND, SessionOptions, get_backend
from edgetx.verify.explain import Explanation, Point, block_of, module_path
from edgetx.verify.tolerances import INTERMEDIATE_REL_TOL


def _boundary_values(model) -> dict[str, list[tuple[str, object]]]:
    """module path -> values produced inside it and used outside it (its outputs), in order."""
    consumers: dict[str, list[str]] = {}
    node_path: dict[int, str] = {}
    last = ""
    for i, node in enumerate(model.graph.node):
        last = node_path[i] = module_path(node) or last
        for name in node.input:
            consumers.setdefault(name, []).append(last)
    graph_outputs = {o.name for o in model.graph.output}
    boundaries: dict[str, list[tuple[str, object]]] = {}
    for i, node in enumerate(model.graph.node):
        path = node_path[i]
        parts = path.split(".") if path else []
        for depth in range(1, len(parts) + 1):
            scope = ".".join(parts[:depth])
            for out in node.output:
                users = consumers.get(out, [])
                leaves = out in graph_outputs or any(u != scope and not u.startswith(scope + ".") for u in users)
                if out and leaves:
                    boundaries.setdefault(scope, []).append((out, node))
    return boundaries


def _first_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((t for t in output if isinstance(t, torch.Tensor)), None)
    return getattr(output, "last_hidden_state", None) if not isinstance(output, dict) else None


@torch.no_grad()
def explain_torch(module: torch.nn.Module, run_torch, onnx_path: str | Path, feeds: dict[str, np.ndarray], *,
                  backend: str = REFERENCE_BACKEND, rel_tol: float = INTERMEDIATE_REL_TOL) -> Explanation:
    """Compare `module` (run by `run_torch()`, which calls it on the same inputs as `feeds`)
    with the ONNX graph at `onnx_path`, submodule by submodule."""
    import onnx

    model = onnx.load(str(onnx_path))
    boundaries = _boundary_values(model)
    modules = [(name, m) for name, m in module.named_modules() if name and name in boundaries]
    report = Explanation("PyTorch", f"{Path(onnx_path).name} on {backend}", rel_tol)
    if not modules:
        report.groups.append({"group": "all", "compared": 0, "worst_rel": 0.0, "first_over": None})
        return report
    groups: dict[str, list[tuple[str, torch.nn.Module]]] = {}
    seen_block = False
    for name, m in modules:
        block = block_of(name)
        label = f"block {block}" if block is not None else ("head" if seen_block else "embeddings")
        seen_block = seen_block or block is not None
        groups.setdefault(label, []).append((name, m))
    candidates = sorted({v for name, _ in modules for v, _ in boundaries[name]})
    with tempfile.TemporaryDirectory(prefix="edgetx-explain-") as tmp:
        session = get_backend(backend).create_session(expose_file(onnx_path, candidates, Path(tmp) / "m.onnx"),
                                                      SessionOptions())
        for label, members in groups.items():  # one block's intermediates at a time
            captured: dict[str, np.ndarray] = {}
            hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(
                name, t.detach().float().numpy()) if (t := _first_tensor(out)) is not None else None)
                for name, m in members]
            try:
                run_torch()
            finally:
                for hook in hooks:
                    hook.remove()
            wanted = sorted({v for name, _ in members for v, _ in boundaries[name]})
            onnx_out = session.run(feeds, wanted).outputs
            worst, first_over, compared = 0.0, None, 0
            for name in captured:  # in the order the modules finished, i.e. execution order
                ref = captured[name]
                match = next(((v, n) for v, n in boundaries[name] if ref is not None
                              and onnx_out[v].shape == ref.shape), None)
                if match is None:
                    continue
                value, node = match
                compared += 1
                rel = metrics.max_rel(ref, onnx_out[value])
                worst = max(worst, rel)
                if rel > rel_tol and first_over is None:
                    first_over = Point(value, node.name, node.op_type, name, label,
                                       metrics.max_abs(ref, onnx_out[value]), rel)
            report.compared += compared
            report.groups.append({"group": label, "compared": compared, "worst_rel": worst,
                                  "first_over": first_over.__dict__ if first_over else None})
            if first_over and report.first is None:
                report.first = first_over
    return report
