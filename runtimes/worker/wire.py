"""The wire format between edgetx and an out-of-process worker (ARM64 under QEMU, Node + wasm).

A message is a 4-byte little-endian length, a UTF-8 JSON header of that length, then the raw
little-endian bytes of each tensor the header lists, back to back:

    header = {"op": "run", ..., "tensors": [{"name": "input_ids", "dtype": "int64", "shape": [1, 8]}, ...]}

Requests: {"op": "load", "model": PATH, "threads": N, "graph_optimization": LEVEL|null, "extra": {}},
{"op": "run", "outputs": [names] | null, "tensors": [...]}, {"op": "close"} (a worker may add its own ops; `serve`
is the loop every Python worker runs).
Replies: {"ok": true, "seconds": S, "tensors": [...]} or {"ok": false, "error": "..."}.

Only stdlib and numpy here: the ARM64 worker imports this file under emulation.
"""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

import numpy as np

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")


def write_message(stream: BinaryIO, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Send `header` plus `arrays` (listed in header["tensors"] in order) and flush."""
    arrays = arrays or {}
    tensors, blobs = [], []
    for name, value in arrays.items():
        value = np.ascontiguousarray(value).reshape(np.shape(value))  # ascontiguousarray makes a scalar 1-D
        if value.dtype.name not in DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {value.dtype} cannot cross the wire ({', '.join(DTYPES)})")
        tensors.append({"name": name, "dtype": value.dtype.name, "shape": list(value.shape)})
        blobs.append(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
    body = json.dumps({**header, "tensors": tensors}).encode()
    stream.write(struct.pack("<I", len(body)) + body)
    for blob in blobs:
        stream.write(blob)
    stream.flush()


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EOFError(f"stream closed with {remaining} of {size} bytes still to read")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> tuple[dict, dict[str, np.ndarray]]:
    """Receive one message: its header and its tensors by name."""
    (length,) = struct.unpack("<I", _read_exact(stream, 4))
    header = json.loads(_read_exact(stream, length))
    arrays = {}
    for spec in header.get("tensors", []):
        dtype = np.dtype(spec["dtype"]).newbyteorder("<")
        count = int(np.prod(spec["shape"], dtype=np.int64))
        raw = _read_exact(stream, count * dtype.itemsize)
        arrays[spec["name"]] = np.frombuffer(raw, dtype=dtype).reshape(spec["shape"]).astype(dtype.newbyteorder("="))
    return header, arrays


def serve(stdin: BinaryIO, stdout: BinaryIO, handle) -> None:
    """A worker's loop: answer requests until {"op": "close"} or the end of input. `handle(request, arrays)` returns
    (reply fields, tensors); an exception in it becomes {"ok": false, "error": ...} and the worker keeps serving."""
    while True:
        try:
            request, arrays = read_message(stdin)
        except EOFError:
            return
        if request.get("op") == "close":
            write_message(stdout, {"ok": True})
            return
        try:
            reply, tensors = handle(request, arrays)
        except Exception as e:  # report to the caller, keep serving
            write_message(stdout, {"ok": False, "error": f"{type(e).__name__}: {e}"})
        else:
            write_message(stdout, {"ok": True, **reply}, tensors)
