"""The nodes of an ONNX file, read with the standard library alone (no `onnx` package).

Used by `ort_worker.py` inside vendor runtimes (a Debian python, a plugin EP's venv) where the
`onnx` package is absent, to learn which nodes a session's graph holds. Reads the protobuf wire
format directly: ModelProto.graph (7) -> GraphProto.node (1) -> NodeProto input (1), output (2),
name (3), op_type (4), domain (7). Everything else (initializers, attributes) is skipped unread.
"""

from __future__ import annotations


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes, start: int = 0, end: int | None = None):
    """(field number, wire type, value) of each field; length-delimited values are (start, end)."""
    pos, end = start, len(data) if end is None else end
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = (pos, pos + length), pos + length
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")
        yield number, wire, value


def read_nodes(path: str) -> list[dict]:
    """[{"name", "op_type", "domain", "inputs", "outputs"}] of the main graph of an ONNX file."""
    with open(path, "rb") as f:
        data = f.read()
    nodes = []
    for number, wire, value in _fields(data):
        if number != 7 or wire != 2:
            continue
        for gnumber, gwire, gvalue in _fields(data, *value):
            if gnumber != 1 or gwire != 2:
                continue
            node = {"name": "", "op_type": "", "domain": "", "inputs": [], "outputs": []}
            for nnumber, nwire, nvalue in _fields(data, *gvalue):
                if nwire != 2 or nnumber not in (1, 2, 3, 4, 7):
                    continue
                text = data[nvalue[0]:nvalue[1]].decode("utf-8", "replace")
                if nnumber == 1:
                    node["inputs"].append(text)
                elif nnumber == 2:
                    node["outputs"].append(text)
                else:
                    node[{3: "name", 4: "op_type", 7: "domain"}[nnumber]] = text
            nodes.append(node)
    return nodes
