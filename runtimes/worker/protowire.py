"""The protobuf wire format, read with the standard library alone: what an ONNX file is made of.

One reader for two users: edgetx's structural check of every ONNX file in a bundle before a runtime
parses it (edgetx.bundle.onnx_check) and the worker's list of a graph's nodes (onnx_nodes.py), which runs
inside vendor runtimes and under emulation where neither edgetx nor the `onnx` package is installed.
Truncated or malformed data is reported through the caller's `fail(position, what)`, which must raise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NoReturn

Fail = Callable[[int, str], NoReturn]


def varint(data, pos: int, end: int, fail: Fail) -> tuple[int, int]:
    """(the varint at `pos`, the position after it), within [pos, end)."""
    result, shift = 0, 0
    while True:
        if pos >= end:
            fail(pos, "a number runs past the end of its message (truncated?)")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFF_FFFF_FFFF_FFFF, pos
        shift += 7
        if shift > 63:
            fail(pos, "a number is longer than 10 bytes")


def fields(data, start: int, end: int, fail: Fail) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of each field in [start, end).
    Varints give their value (and the end of the varint); length-delimited fields give their payload span."""
    pos = start
    while pos < end:
        key = data[pos]  # one-byte keys and lengths (the common case) are read inline: the walk is hot
        key, pos = (key, pos + 1) if key < 0x80 else varint(data, pos, end, fail)
        field, wire = key >> 3, key & 7
        if field == 0:
            fail(pos, "field number 0")
        if wire == 0:
            value, pos = varint(data, pos, end, fail)
            yield field, 0, value, pos
        elif wire == 2:
            length = data[pos] if pos < end else 0x80
            length, pos = (length, pos + 1) if length < 0x80 else varint(data, pos, end, fail)
            if pos + length > end:
                fail(pos, f"field {field} claims {length} bytes but only {end - pos} remain (truncated?)")
            yield field, 2, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                fail(pos, f"field {field} runs past the end of its message (truncated?)")
            yield field, wire, 0, pos
        else:
            fail(pos, f"field {field} has wire type {wire}, which ONNX never uses")
