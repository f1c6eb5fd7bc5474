"""The one pass interface: an onnx_ir pass whose result also says what it did (for the manifest)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from edgetx.errors import EdgetxError
from edgetx.onnx_info import op_histogram

try:
    import onnx_ir as ir
except ImportError:
    raise EdgetxError("graph transformations need onnx-ir and onnxscript: pip install 'edgetx[export]'") from None


@dataclasses.dataclass
class PassResult(ir.passes.PassResult):
    """onnx_ir's result (model, modified) plus `details`: counts, or `skipped` with the reason."""

    details: dict = dataclasses.field(default_factory=dict)


class GraphPass(ir.passes.InPlacePass):
    """An edgetx graph transformation. Subclasses set `name` and implement `call(model)`, returning
    `self.done(model, **counts)` or `self.skipped(model, reason)`. After a run, `record` holds what the
    pass did and the op histogram before and after (what the manifest's graph_edits and optimization keep).
    """

    name = "graph-pass"
    adds_inputs: tuple[dict, ...] = ()  # io specs of the graph inputs the pass adds when it modifies the graph
    record: dict | None = None

    def done(self, model: ir.Model, modified: bool = True, **details) -> PassResult:
        return PassResult(model, modified, details)

    def skipped(self, model: ir.Model, reason: str) -> PassResult:
        """Nothing to do, and why (the one way a pass says so)."""
        return PassResult(model, False, {"skipped": reason})

    def __call__(self, model_or_result, /) -> PassResult:
        model = model_or_result.model if isinstance(model_or_result, ir.passes.PassResult) else model_or_result
        before = op_histogram(model.graph)
        result = super().__call__(model)
        details = getattr(result, "details", {})  # an onnx_ir pass wrapped by a subclass returns theirs
        self.record = {"pass": self.name, "modified": result.modified, **details, "ops_before": before,
                       "ops_after": op_histogram(result.model.graph)}
        return result if isinstance(result, PassResult) else PassResult(result.model, result.modified)


class FunctionalGraphPass(GraphPass):
    """A GraphPass that returns a new model (e.g. one that goes through onnxruntime and back)."""

    @property
    def in_place(self) -> bool:
        return False

    @property
    def changes_input(self) -> bool:
        return False


def add_initializer(graph: ir.Graph, name: str, array) -> ir.Value:
    """A new initializer `name` holding `array` (numpy), registered in `graph`."""
    value = ir.val(name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def default_opset(model: ir.Model, missing: int = 0) -> int:
    """The model's version of the default ONNX domain ("" or "ai.onnx"); `missing` when it imports neither."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", missing))


def run(model: ir.Model, passes: Sequence[GraphPass]) -> tuple[ir.Model, list[dict]]:
    """Apply `passes` in order (onnx_ir's Sequential); return the model and each pass's record."""
    if not passes:
        return model, []
    for p in passes:
        p.record = None
    try:
        result = ir.passes.Sequential(*passes)(model)
    except ir.passes.PassError as e:  # Sequential wraps what a pass raised; edgetx's own errors go out as they are
        cause = e.__cause__
        while isinstance(cause, ir.passes.PassError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, EdgetxError):
            raise cause from None
        raise
    return result.model, [p.record for p in passes]
