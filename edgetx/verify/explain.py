"""Where did two sides part ways? Value-by-value comparison of two ONNX graphs, block by block.

The two sides are any pair of ONNX files on any pair of backends: fp32 vs a quantized or fused
variant, backend A vs backend B, or two exports. Values are matched by name (quantizers and
fusions keep the names of the values they replace); each is labelled with the PyTorch module
that produced it, from the exporter's `pkg.torch.onnx.name_scopes` metadata. Blocks are
compared one at a time, so only one block's intermediates are in memory at once.
Needs onnx (not torch).
"""

from __future__ import annotations

import ast
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetx.verify import metrics
from edgetx.errors import EdgetxError
from edgetx.runtimes.backend import REFERENCE_BACKEND, SessionOptions, get_backend
from edgetx.verify.tolerances import INTERMEDIATE_REL_TOL

_BLOCK = re.compile(r"(?:^|\.)(?:h|layers|layer|blocks|block)\.(\d+)(?:\.|$)")
_FLOAT_TYPES = {1, 10, 11, 16}  # float, float16, double, bfloat16


def module_path(node) -> str:
    """The PyTorch module a node came from ("h.3.mlp.c_fc"), or "" when unknown."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            modules = [s for s in scopes[:-1] if s]  # the last scope is the op itself
            path = modules[-1] if modules else ""
            return path.removeprefix("module.")  # edgetx's export wrapper holds the model as .module
    return ""


def block_of(path: str) -> int | None:
    match = _BLOCK.search(path)
    return int(match.group(1)) if match else None


@dataclass
class Point:
    """One compared value."""

    value: str
    node: str
    op_type: str
    module: str
    group: str
    max_abs: float
    max_rel: float
    other_node: str = ""  # the producer on side B, when it differs (a fused or quantized op)
    other_op: str = ""


@dataclass
class Explanation:
    side_a: str
    side_b: str
    rel_tol: float
    compared: int = 0
    first: Point | None = None
    groups: list[dict] = field(default_factory=list)  # per block: label, compared, worst, first over

    @property
    def diverged(self) -> bool:
        return self.first is not None

    def to_dict(self) -> dict:
        return {"side_a": self.side_a, "side_b": self.side_b, "rel_tol": self.rel_tol, "compared": self.compared,
                "first_divergence": asdict(self.first) if self.first else None, "groups": self.groups}

    def to_markdown(self) -> str:
        lines = [f"### {self.side_a} vs {self.side_b}", "",
                 "| where | values compared | worst diff / scale | first value over tolerance |", "|---|---|---|---|"]
        lines += [f"| {' | '.join(row)} |" for row in render(self)]
        return "\n".join(lines + ["", self.summary(), ""])

    def summary(self) -> str:
        if self.first is None:
            return (f"no divergence: {self.compared} values agree within {self.rel_tol:g} (relative to each "
                    f"value's scale) between {self.side_a} and {self.side_b}")
        p = self.first
        where = f"{p.group}, module {p.module or '?'}" if p.module else p.group
        produced = f" (on side B: {p.other_op} {p.other_node})" if p.other_node else ""
        return (f"first divergence in {where}: {p.op_type} {p.node} -> {p.value}{produced}: "
                f"max |diff| {p.max_abs:.3g}, {p.max_rel:.3g} of the value's scale (tolerance {self.rel_tol:g})")


def _graph_values(model) -> tuple[list[tuple[str, object]], dict[str, object]]:
    """(value, producing node) in topological order, and value -> producer."""
    order, producer = [], {}
    for node in model.graph.node:
        for out in node.output:
            if out:
                order.append((out, node))
                producer[out] = node
    return order, producer


def _float_values(model) -> set[str] | None:
    known = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    return {name for name, t in known.items() if t in _FLOAT_TYPES} if known else None


def _group_label(path: str, seen_block: bool) -> str:
    block = block_of(path)
    if block is not None:
        return f"block {block}"
    return "head" if seen_block else "embeddings"


def explain(a: str | Path, b: str | Path, feeds: dict[str, np.ndarray], *, backend_a: str = REFERENCE_BACKEND,
            backend_b: str | None = None, rel_tol: float = INTERMEDIATE_REL_TOL) -> Explanation:
    """Run both sides on `feeds` and find the first value, in graph order, whose difference
    exceeds `rel_tol` of the reference's (side A's) scale."""
    try:
        import onnx
    except ImportError:
        raise EdgetxError("--explain reads ONNX graphs and needs the onnx package: pip install onnx") from None
    from edgetx.passes.expose import expose_file

    backend_b = backend_b or backend_a
    model_a, model_b = onnx.load(str(a)), onnx.load(str(b))
    order_a, _ = _graph_values(model_a)
    _, producer_b = _graph_values(model_b)
    floats_a = _float_values(model_a)
    candidates = [(v, n) for v, n in order_a if v in producer_b and (floats_a is None or v in floats_a)]
    if not candidates:
        raise EdgetxError(f"{a} and {b} share no intermediate value names to compare")

    groups: dict[str, list[tuple[str, object, str]]] = {}
    seen_block, last_path = False, ""
    for value, node in candidates:
        path = module_path(node) or last_path  # optimizer-made nodes lose metadata; inherit it
        last_path = path
        label = _group_label(path, seen_block)
        seen_block = seen_block or label.startswith("block")
        groups.setdefault(label, []).append((value, node, path))

    report = Explanation(f"{Path(a).name} on {backend_a}", f"{Path(b).name} on {backend_b}", rel_tol)
    with tempfile.TemporaryDirectory(prefix="edgetx-explain-") as tmp:
        names = [v for v, _ in candidates]
        session_a = get_backend(backend_a).create_session(expose_file(a, names, Path(tmp) / "a.onnx"),
                                                          SessionOptions())
        session_b = get_backend(backend_b).create_session(expose_file(b, names, Path(tmp) / "b.onnx"),
                                                          SessionOptions())
        del model_a, model_b
        for label, items in groups.items():  # one block's intermediates at a time
            wanted = [v for v, _, _ in items]
            out_a = session_a.run(feeds, wanted).outputs
            out_b = session_b.run(feeds, wanted).outputs
            worst, first_over, compared = 0.0, None, 0
            for value, node, path in items:
                ref, got = out_a[value], out_b[value]
                if ref.shape != got.shape or not np.issubdtype(ref.dtype, np.floating):
                    continue
                compared += 1
                rel = metrics.max_rel(ref, got)
                worst = max(worst, rel)
                if rel > rel_tol and first_over is None:
                    other = producer_b[value]
                    first_over = Point(value, node.name, node.op_type, path, label, metrics.max_abs(ref, got), rel,
                                       other.name if other.name != node.name else "",
                                       other.op_type if other.name != node.name else "")
            report.compared += compared
            report.groups.append({"group": label, "compared": compared, "worst_rel": worst,
                                  "first_over": asdict(first_over) if first_over else None})
            if first_over and report.first is None:
                report.first = first_over
    return report


def render(report: Explanation) -> list[list[str]]:
    """Rows for a table: group, values compared, worst relative diff, first value over tolerance."""
    rows = []
    for g in report.groups:
        first = g["first_over"]
        rows.append([g["group"], str(g["compared"]), f"{g['worst_rel']:.2e}",
                     f"{first['op_type']} {first['node']} ({first['module'] or '?'})" if first else "-"])
    return rows


def explain_bundle(bundle, variant: str = "fp32", against: str | None = None, backend: str = REFERENCE_BACKEND,
                   against_backend: str | None = None, rel_tol: float = INTERMEDIATE_REL_TOL) -> Explanation:
    """Explain `variant` on `backend` against a reference side, on the bundle's golden inputs.

    `against`: another variant's name, a path to an .onnx file, or "pytorch" (re-loads the source
    model named in the provenance; needs torch). Default: the fp32 variant for other variants,
    the same variant on `against_backend` when one is given, else PyTorch.
    """
    from edgetx.verify.parity import golden_feeds
    from edgetx.runtimes.session import Session

    session = Session(bundle, variant=variant, backend=backend)
    feeds = golden_feeds(session, bundle.golden())
    target = bundle.file(bundle.variant(variant).file)
    if against is None:
        against = "fp32" if variant != "fp32" else (variant if against_backend else "pytorch")
    optimization = bundle.manifest.optimization or {}
    if against == "pytorch" and optimization.get("winner", "unfused") != "unfused":
        raise EdgetxError(f"{bundle.path}'s fp32 graph is the fused candidate {optimization['winner']!r}: values "
                          "inside fused ops have no PyTorch module to compare with. Rebuild with --no-optimize to "
                          "compare with PyTorch module by module, or compare two ONNX sides with --against")
    if against == "pytorch":
        try:
            from edgetx.exporters.explain_torch import explain_torch
            from edgetx.exporters.source import load_source
        except ImportError as e:
            raise EdgetxError(f"comparing with PyTorch needs the export extra ({e}): pip install 'edgetx[export]'; "
                              "or compare two variants/backends with --against") from None
        from edgetx.exporters.module import is_factory_ref

        source = bundle.manifest.provenance.get("source")
        if not source or not (is_factory_ref(source) or Path(source).exists()):
            raise EdgetxError(f"the source model {source!r} named in {bundle.path}/manifest.json is not on this "
                              "machine; compare with another variant or backend instead (--against)")
        loaded = load_source(source if is_factory_ref(source) else Path(source))
        return explain_torch(loaded.module, lambda: loaded.run_torch(feeds), target, feeds, backend=backend,
                             rel_tol=rel_tol)
    reference = bundle.file(bundle.variant(against).file) if against in bundle.variants else Path(against)
    if not reference.is_file():
        raise EdgetxError(f"--against {against!r} is neither a variant of {bundle.path} "
                          f"({', '.join(bundle.variants)}) nor an ONNX file")
    return explain(reference, target, feeds, backend_a=against_backend or backend, backend_b=backend, rel_tol=rel_tol)
