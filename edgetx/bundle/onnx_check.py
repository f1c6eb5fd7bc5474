"""A structural check of ONNX files, run before any runtime parses them (part of Bundle.load).

A runtime trusts a model file's protobuf. A hostile or damaged one can point its external data
outside the bundle, carry names that are not UTF-8 (onnxruntime's Python API then fails outside
its own error handling) or tensors whose data does not match their shape. `OnnxCheck` reads the
protobuf wire format directly (edgetx.runtimes.worker.protowire): the runtime path has no onnx package (onnxruntime does not need it),
and skipping tensor payloads keeps it cheap enough to run on every load.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Container, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from edgetx.bundle.files import MANIFEST
from edgetx.runtimes.worker import protowire
from edgetx.errors import BundleError

# Cost: ~6 ms for the reference GPT, ~70 ms for SmolLM2-135M's 650 MB (hashing it takes 530 ms), so the
# check runs on every load, the trusted `verify_hashes=False` one included.
_ONNX_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
              16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2, 27: 6, 28: 6}
# The messages walked: {field number: (field name, message type, or "" for a UTF-8 string)}.
_ONNX_MESSAGES: dict[str, dict[int, tuple[str, str]]] = {
    "ModelProto": {2: ("producer_name", ""), 3: ("producer_version", ""), 4: ("domain", ""),
                   6: ("doc_string", ""), 7: ("graph", "GraphProto"), 8: ("opset_import", "OperatorSetIdProto"),
                   14: ("metadata_props", "StringStringEntryProto"), 20: ("training_info", "TrainingInfoProto"),
                   25: ("functions", "FunctionProto")},
    "GraphProto": {1: ("node", "NodeProto"), 2: ("name", ""), 5: ("initializer", "TensorProto"),
                   15: ("sparse_initializer", "SparseTensorProto"), 10: ("doc_string", ""),
                   11: ("input", "ValueInfoProto"), 12: ("output", "ValueInfoProto"),
                   13: ("value_info", "ValueInfoProto"), 14: ("quantization_annotation", "TensorAnnotation"),
                   16: ("metadata_props", "StringStringEntryProto")},
    "NodeProto": {1: ("input", ""), 2: ("output", ""), 3: ("name", ""), 4: ("op_type", ""), 7: ("domain", ""),
                  8: ("overload", ""), 5: ("attribute", "AttributeProto"), 6: ("doc_string", ""),
                  9: ("metadata_props", "StringStringEntryProto")},
    "AttributeProto": {1: ("name", ""), 21: ("ref_attr_name", ""), 13: ("doc_string", ""), 5: ("t", "TensorProto"),
                       6: ("g", "GraphProto"), 22: ("sparse_tensor", "SparseTensorProto"), 14: ("tp", "TypeProto"),
                       10: ("tensors", "TensorProto"), 11: ("graphs", "GraphProto"),
                       23: ("sparse_tensors", "SparseTensorProto"), 15: ("type_protos", "TypeProto")},
    "FunctionProto": {1: ("name", ""), 4: ("input", ""), 5: ("output", ""), 6: ("attribute", ""),
                      11: ("attribute_proto", "AttributeProto"), 7: ("node", "NodeProto"), 8: ("doc_string", ""),
                      9: ("opset_import", "OperatorSetIdProto"), 10: ("domain", ""), 13: ("overload", ""),
                      12: ("value_info", "ValueInfoProto"), 14: ("metadata_props", "StringStringEntryProto")},
    "TrainingInfoProto": {1: ("initialization", "GraphProto"), 2: ("algorithm", "GraphProto"),
                          3: ("initialization_binding", "StringStringEntryProto"),
                          4: ("update_binding", "StringStringEntryProto")},
    "SparseTensorProto": {1: ("values", "TensorProto"), 2: ("indices", "TensorProto")},
    "ValueInfoProto": {1: ("name", ""), 2: ("type", "TypeProto"), 3: ("doc_string", ""),
                       4: ("metadata_props", "StringStringEntryProto")},
    "TypeProto": {1: ("tensor_type", "TypeProto.Tensor"), 4: ("sequence_type", "TypeProto.Sequence"),
                  5: ("map_type", "TypeProto.Map"), 9: ("optional_type", "TypeProto.Optional"),
                  8: ("sparse_tensor_type", "TypeProto.SparseTensor"), 7: ("opaque_type", "TypeProto.Opaque"),
                  6: ("denotation", "")},
    "TypeProto.Tensor": {2: ("shape", "TensorShapeProto")},
    "TypeProto.SparseTensor": {2: ("shape", "TensorShapeProto")},
    "TypeProto.Sequence": {1: ("elem_type", "TypeProto")},
    "TypeProto.Optional": {1: ("elem_type", "TypeProto")},
    "TypeProto.Map": {2: ("value_type", "TypeProto")},
    "TypeProto.Opaque": {1: ("domain", ""), 2: ("name", "")},
    "TensorShapeProto": {1: ("dim", "TensorShapeProto.Dimension")},
    "TensorShapeProto.Dimension": {2: ("dim_param", ""), 3: ("denotation", "")},
    "TensorAnnotation": {1: ("tensor_name", ""), 2: ("quant_parameter_tensor_names", "StringStringEntryProto")},
    "OperatorSetIdProto": {1: ("domain", "")},
    "StringStringEntryProto": {1: ("key", ""), 2: ("value", "")},
    "TensorProto": {8: ("name", ""), 12: ("doc_string", ""), 13: ("external_data", "StringStringEntryProto"),
                    16: ("metadata_props", "StringStringEntryProto")},
}
_MAX_DEPTH = 64  # protobuf's own default recursion limit is 100


class OnnxCheck:
    """Walks one ONNX file's protobuf and refuses, naming the place, what no runtime should parse."""

    def __init__(self, path: Path, root: Path, listed: Container[str]):
        self.path, self.root, self.listed = path, root, listed
        self.data: Any = b""

    def run(self) -> None:
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise self._error(0, ("model",), "the file is empty")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as self.data:
                has_graph = self._message("ModelProto", 0, size, ("model",))
        if not has_graph:
            raise self._error(0, ("model",), "it holds no graph")

    def _fail(self, pos: int, where: tuple[str, ...], what: str):
        raise self._error(pos, where, what)

    def _error(self, pos: int, where: tuple[str, ...], what: str) -> BundleError:
        return BundleError(f"{self.path}: not a valid ONNX model: {what} (at byte {pos}, in {'.'.join(where)}); "
                           "the file is damaged or was not written by an ONNX exporter, rebuild the bundle")

    def _fields(self, start: int, end: int, where: tuple[str, ...]) -> Iterator[tuple[int, int, int, int]]:
        """(field number, wire type, value or payload start, payload end) of each field in [start, end)."""
        return protowire.fields(self.data, start, end, lambda pos, what: self._fail(pos, where, what))

    def _text(self, start: int, end: int, where: tuple[str, ...]) -> str:
        try:
            return self.data[start:end].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._error(start + e.start, where, "a name or string is not UTF-8 text") from None

    def _message(self, kind: str, start: int, end: int, where: tuple[str, ...]) -> bool:
        """Check one message; True if it had a field 7 (a ModelProto's graph)."""
        if len(where) > _MAX_DEPTH:
            raise self._error(start, where, f"messages nested deeper than {_MAX_DEPTH} levels")
        schema, counts, tensor, seen_7 = _ONNX_MESSAGES[kind], {}, {}, False
        for field, wire, a, b in self._fields(start, end, where):
            seen_7 = seen_7 or field == 7
            if kind == "TensorProto" and field not in schema:
                tensor.setdefault(field, []).append((wire, a, b))
                continue
            if field not in schema:
                continue
            name, sub = schema[field]
            index = counts[field] = counts.get(field, -1) + 1
            inner = where + (f"{name}[{index}]",)
            if wire != 2:
                raise self._error(a, inner, f"wire type {wire} where a {sub or 'string'} belongs")
            if sub == "":
                self._text(a, b, inner)
            elif sub == "StringStringEntryProto" and name == "external_data":
                self._message(sub, a, b, inner)
                entry = {f: self._text(x, y, inner) for f, w, x, y in self._fields(a, b, inner) if w == 2}
                tensor.setdefault("external", {})[entry.get(1, "")] = entry.get(2, "")
            else:
                self._message(sub, a, b, inner)
        if kind == "TensorProto":
            self._tensor(tensor, start, where)
        return seen_7

    def _tensor(self, fields: dict, start: int, where: tuple[str, ...]) -> None:
        dims: list[int] = []
        for wire, a, b in fields.get(1, []):
            if wire == 0:
                dims.append(a)
            else:
                while a < b:
                    value, a = protowire.varint(self.data, a, b, lambda pos, what: self._fail(pos, where, what))
                    dims.append(value)
        dims = [d - (1 << 64) if d >= 1 << 63 else d for d in dims]
        if any(d < 0 for d in dims):
            raise self._error(start, where, f"a tensor has a negative dimension in {dims}")
        dtype = next((a for w, a, _ in fields.get(2, []) if w == 0), 0)
        bits = _ONNX_BITS.get(dtype)
        nbytes = None if bits is None else (math.prod(dims) * bits + 7) // 8
        raw = [b - a for w, a, b in fields.get(9, []) if w == 2]
        external = next((a for w, a, _ in fields.get(14, []) if w == 0), 0) == 1
        if external:
            self._external(fields.get("external", {}), nbytes, start, where)
        elif raw and nbytes is not None and raw[-1] != nbytes:
            raise self._error(start, where, f"a tensor of shape {dims} and data_type {dtype} needs {nbytes} bytes "
                                            f"but holds {raw[-1]}")
        elif not raw and math.prod(dims) > 0 and not any(f in fields for f in (4, 5, 6, 7, 10, 11)):
            raise self._error(start, where, f"a tensor of shape {dims} holds no data")

    def _external(self, entries: dict[str, str], nbytes: int | None, start: int, where: tuple[str, ...]) -> None:
        location = entries.get("location", "")
        pure = PurePosixPath(location)
        if not location or pure.is_absolute() or ".." in pure.parts or "\\" in location:
            raise self._error(start, where, f"external data location {location!r} must be a relative path inside "
                                            "the bundle")
        resolved, root = (self.path.parent / pure).resolve(), self.root.resolve()
        if not resolved.is_relative_to(root):
            raise self._error(start, where, f"external data {location!r} resolves outside the bundle (a symlink?)")
        rel = resolved.relative_to(root).as_posix()
        if rel not in self.listed:
            raise self._error(start, where, f"external data file {rel!r} is not listed under 'files' in "
                                            f"{MANIFEST}, so its sha256 is not checked")
        try:
            offset, length = int(entries.get("offset", 0)), int(entries.get("length", nbytes or 0))
        except ValueError:
            raise self._error(start, where, f"external data offset/length are not integers: {entries}") from None
        if offset < 0 or length < 0 or (nbytes is not None and length != nbytes) \
                or offset + length > resolved.stat().st_size:
            raise self._error(start, where, f"external data {rel!r} offset {offset} length {length} does not fit "
                              f"the tensor ({nbytes} bytes) or the file ({resolved.stat().st_size} bytes)")
