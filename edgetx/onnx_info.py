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


_MODEL_GRAPH, _GRAPH_PARTS = 7, {1: "node", 11: "input", 12: "output"}  # ModelProto / GraphProto field numbers


def _varint(data, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at


def _fields(data, start: int, end: int):
    """(field number, start, end) of each length-delimited field of the protobuf message in data[start:end]; the
    others are skipped. Nothing is decoded, so an initializer's bytes are never copied."""
    at = start
    while at < end:
        key, at = _varint(data, at)
        wire = key & 7
        if wire == 0:
            at = _varint(data, at)[1]
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            size, at = _varint(data, at)
            yield key >> 3, at, at + size
            at += size
        else:
            raise EdgetxError(f"not an ONNX protobuf (wire type {wire} at byte {at})")


def graph_skeleton(path: str | Path):
    """An ONNX file's main graph with its nodes, inputs and outputs only (an onnx.GraphProto without initializers),
    read in milliseconds where onnx.load would parse every weight."""
    import mmap

    import onnx

    graph = onnx.GraphProto()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for field, start, end in _fields(data, 0, len(data)):
            if field == _MODEL_GRAPH:
                for part, begin, stop in _fields(data, start, end):
                    if part in _GRAPH_PARTS:
                        getattr(graph, _GRAPH_PARTS[part]).add().ParseFromString(data[begin:stop])
    return graph
