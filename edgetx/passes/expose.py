"""`ExposeValues`: intermediate values made graph outputs, so a session can return them (divergence
bisection in edgetx.verify.explain, per-MatMul sensitivity in edgetx.quant.sensitivity)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgetx.errors import EdgetxError
from edgetx.passes.base import GraphPass, PassResult, ir


class ExposeValues(GraphPass):
    """Append the named values (node outputs or graph inputs) to the graph's outputs."""

    name = "expose-values"

    def __init__(self, names: Iterable[str]):
        self.names = list(dict.fromkeys(names))

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        values = {v.name: v for v in graph.inputs} | {v.name: v for node in graph for v in node.outputs if v.name}
        unknown = [name for name in self.names if name not in values]
        if unknown:
            raise EdgetxError(f"no value named {', '.join(map(repr, unknown[:5]))} in the graph to expose")
        outputs = {v.name for v in graph.outputs}
        wanted = [name for name in self.names if name not in outputs]
        if not wanted:
            return self.skipped(model, "every named value is already a graph output")
        graph.outputs.extend(values[name] for name in wanted)
        return self.done(model, exposed=len(wanted))


def expose_file(src: str | Path, names: Iterable[str], dst: str | Path) -> Path:
    """A copy of the ONNX file `src` at `dst` with `names` as extra graph outputs."""
    from edgetx.passes.files import transform_file

    transform_file(src, dst, [ExposeValues(names)])
    return Path(dst)
