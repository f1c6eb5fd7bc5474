"""The nodes of an ONNX file, read with the standard library alone (no `onnx` package).

Used by `ort_worker.py` inside vendor runtimes (a Debian python, a plugin EP's venv) where the
`onnx` package is absent, to learn which nodes a session's graph holds. Reads the protobuf wire
format directly (protowire.py, beside it): ModelProto.graph (7) -> GraphProto.node (1) -> NodeProto input (1), output (2),
name (3), op_type (4), domain (7). Everything else (initializers, attributes) is skipped unread.
"""

from __future__ import annotations


try:
    from edgetx.runtimes.worker import protowire  # imported as part of edgetx
except ImportError:  # run beside it by the stand-alone worker (under emulation there is no edgetx)
    import protowire


def _fail(pos: int, what: str):
    raise ValueError(f"not a valid ONNX model: {what} (at byte {pos})")


def _fields(data: bytes, start: int = 0, end: int | None = None):
    """(field number, wire type, value) of each field; length-delimited values are (start, end)."""
    for number, wire, a, b in protowire.fields(data, start, len(data) if end is None else end, _fail):
        yield number, wire, (a, b) if wire == 2 else a


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
