"""What is inside an ONNX file or a bundle (ops, size, I/O, opset, parity)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from edgetx.errors import EdgetxError


def op_histogram(nodes) -> dict[str, int]:
    """Op type -> count, most frequent first (domain-qualified for non-standard ops), over an onnx_ir
    graph or a GraphProto's `node` list: both yield nodes with op_type and domain."""
    counts = Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                     for node in nodes)
    return dict(counts.most_common())


def _dims(type_proto) -> list:
    shape = type_proto.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def inspect_onnx(path: str | Path) -> dict:
    """Op histogram, file size, parameter count, I/O signature and opset of an ONNX file."""
    try:
        import onnx
    except ImportError:
        raise EdgetxError("inspecting ONNX files needs the onnx package: pip install onnx") from None
    path = Path(path)
    if not path.is_file():
        raise EdgetxError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and others for damaged files
        raise EdgetxError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    elem = {v: k for k, v in onnx.TensorProto.DataType.items()}
    params = sum(math.prod(t.dims) for t in model.graph.initializer)
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "parameters": params,
        "opsets": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "nodes": len(model.graph.node),
        "ops": op_histogram(model.graph.node),
        "inputs": [{"name": v.name, "dtype": elem.get(v.type.tensor_type.elem_type, "?").lower(),
                    "shape": _dims(v.type)} for v in model.graph.input],
        "outputs": [{"name": v.name, "dtype": elem.get(v.type.tensor_type.elem_type, "?").lower(),
                     "shape": _dims(v.type)} for v in model.graph.output],
    }
