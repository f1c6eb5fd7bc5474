"""Fixed shapes: every symbolic dim of a graph (batch, seq, past, and sums such as "past+seq") set to a
value, for backends that cannot take dynamic shapes (NNAPI, CoreML, QNN's HTP, XNNPACK); optional
inputs frozen at their default."""

from __future__ import annotations

from edgetx.errors import EdgetxError
from edgetx.passes.base import GraphPass, PassResult, ir
from edgetx.runtimes.session import _dim_value


def _fixed(shape: ir.Shape | None, values: dict[str, int]) -> ir.Shape | None:
    if shape is None:
        return None
    return ir.Shape([values.get(d.value, d) if isinstance(d, ir.SymbolicDim) else d for d in shape])


class FixDims(GraphPass):
    """Every symbolic dim of the bundle's I/O signature `io` (and sums of them) set from `dims`; the output
    shapes inferred at those values (onnx's shape inference, checked). Optional inputs (e.g.
    logits_to_keep) become constants at their default: a fixed-shape graph is for one input signature,
    and a Slice driven by an input would leave its output shape unknown."""

    name = "fixed-dims"

    def __init__(self, dims: dict[str, int], io: dict):
        self.dims, self.io = dims, io

    def call(self, model: ir.Model) -> PassResult:
        from onnx_ir.passes.common import TopologicalSortPass
        from onnx_ir.traversal import RecursiveGraphIterator

        graph = model.graph
        optional = {spec["name"] for spec in self.io["inputs"] if spec.get("optional")}
        frozen = [v for v in graph.inputs if v.name in optional and v.name in graph.initializers]
        for value in frozen:
            graph.inputs.remove(value)
        params = {d for spec in self.io["inputs"] + self.io["outputs"] for d in spec["shape"] if isinstance(d, str)}
        values = {}
        for param in sorted(params):
            values[param] = _dim_value(param, self.dims)
            if values[param] is None:
                raise EdgetxError(f"cannot give {param!r} a value from {self.dims}")
        signature = set(graph.inputs) | set(graph.outputs)
        for value in signature:
            value.shape = _fixed(value.shape, values)
        for node in RecursiveGraphIterator(graph):
            for value in node.outputs:
                if value in signature:
                    continue
                if node.graph is graph:  # stale intermediate shapes (float16 conversion leaves some) fail inference
                    value.shape, value.type = None, None
                else:
                    value.shape = _fixed(value.shape, values)
        for value in graph.initializers.values():  # their type from their data (float16 conversion leaves stale ones)
            if value.const_value is not None and value not in signature:
                value.type, value.shape = ir.TensorType(value.const_value.dtype), ir.Shape(value.const_value.shape)
        TopologicalSortPass()(model)  # onnx's checker wants a topological order (float16 conversion appends Casts)
        self._infer_output_shapes(model)
        return self.done(model, dims=values, frozen_inputs=[v.name for v in frozen])

    def _infer_output_shapes(self, model: ir.Model) -> None:
        """Give each output still dynamic the fixed shape onnx infers for it (as onnxruntime.tools'
        fix_output_shapes does), after checking the graph."""
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(ir.to_proto(model))
            onnx.checker.check_model(inferred)
        except Exception as e:  # onnx raises ValidationError / InferenceError for graphs it cannot type
            raise EdgetxError(f"cannot infer the output shapes at {self.dims}: "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
        for output, proto in zip(model.graph.outputs, inferred.graph.output):
            if output.shape is not None and all(isinstance(d, int) for d in output.shape):
                continue
            dims = proto.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims) and proto.type.tensor_type.HasField("shape"):
                output.shape = ir.Shape([d.dim_value for d in dims])
