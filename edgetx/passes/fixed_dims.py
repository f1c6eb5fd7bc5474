"""Fixed shapes: every symbolic dim of a graph (batch, seq, past, and sums such as "past+seq") set to a
value, for backends that cannot take dynamic shapes (NNAPI, CoreML, QNN's HTP, XNNPACK); optional
inputs frozen at their default."""

from __future__ import annotations

from pathlib import Path

from edgetx.errors import EdgetxError
from edgetx.runtimes.session import _dim_value


def fix_model(source: Path, target: Path, dims: dict[str, int], io: dict, transform=None) -> None:
    """Write `source` with every symbolic dim (and sum of them) replaced by its value (and, if given,
    `transform(model)` applied in place: e.g. edgetx.passes.finite_masks)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    model = onnx.load(str(source))
    _freeze_optional_inputs(model.graph, io)
    params = {d for spec in io["inputs"] + io["outputs"] for d in spec["shape"] if isinstance(d, str)}
    for param in sorted(params):
        value = _dim_value(param, dims)
        if value is None:
            raise EdgetxError(f"cannot give {param!r} a value from {dims}")
        make_dim_param_fixed(model.graph, param, value)
    _sort_nodes(model.graph)  # onnx's checker (run by fix_output_shapes) wants a topological order
    del model.graph.value_info[:]  # optional; stale entries (float16 conversion leaves some) fail inference
    try:
        fix_output_shapes(model)
    except Exception as e:  # onnx raises ValidationError / InferenceError for graphs it cannot type
        raise EdgetxError(f"{source}: cannot infer the output shapes at {dims}: "
                          f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
    if transform is not None:
        transform(model)
    onnx.save(model, str(target))


def _freeze_optional_inputs(graph, io: dict) -> None:
    """Optional inputs (e.g. logits_to_keep) become constants at their default: a fixed-shape graph
    is for one input signature, and a Slice driven by an input would leave its output shape unknown."""
    optional = {spec["name"] for spec in io["inputs"] if spec.get("optional")}
    initializers = {t.name for t in graph.initializer}
    kept = [i for i in graph.input if i.name not in optional or i.name not in initializers]
    del graph.input[:]
    graph.input.extend(kept)


def _sort_nodes(graph) -> None:
    """Order `graph`'s nodes so that each comes after the producers of its inputs (float16 conversion
    appends Cast nodes at the end of the list; onnxruntime does not mind, onnx's checker does)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(range(len(graph.node))), []
    while pending:
        ready = [i for i in pending if all(name in available for name in graph.node[i].input)]
        if not ready:  # a cycle or an input nobody produces: leave the order as it was
            return
        for i in ready:
            available.update(graph.node[i].output)
        ordered += ready
        taken = set(ready)
        pending = [i for i in pending if i not in taken]
    nodes = [graph.node[i] for i in ordered]
    del graph.node[:]
    graph.node.extend(nodes)

