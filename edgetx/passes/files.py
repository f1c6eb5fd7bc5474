"""The one adapter between ONNX files and passes, used at stage boundaries only (the pipeline, the CLI,
and the onnxruntime quantizer calls that need paths): load, save atomically, or run passes file to file.

A model whose weights exceed EXTERNAL_DATA_BYTES is written as a pair, `<name>` and `<name>.data` side by
side, the data file named by a relative location: each file pair is self-contained in its own folder (what
onnxruntime's external-data path validation requires) and moves with `move` as one unit.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgetx.errors import EdgetxError
from edgetx.passes.base import GraphPass, ir, run

if TYPE_CHECKING:
    import onnx

# protobuf cannot hold a message over 2 GiB: above this the weights go to an external data file beside it
EXTERNAL_DATA_BYTES = 1_800_000_000


def load(path: str | Path) -> ir.Model:
    """An ONNX file as an onnx_ir model (external weights are read lazily from beside it)."""
    path = Path(path)
    if not path.is_file():
        raise EdgetxError(f"{path}: no such ONNX file")
    try:
        return ir.load(path)
    except Exception as e:  # protobuf's DecodeError and OS errors for damaged or unreadable files
        raise EdgetxError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def release(model: ir.Model) -> None:
    """Close the memory maps behind `model`'s external weights. onnx_ir maps the whole data file once per
    tensor it reads, and a map outlives the model until the garbage collector breaks the graph's reference
    cycles: the resident pages of every map count in the process's RSS (a 3 GB build held eight maps of a
    data file it had already replaced). Call it when the model is no longer used (after saving it)."""
    import gc

    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                value.const_value.release()
    gc.collect()


def weight_bytes(model: ir.Model) -> int:
    """Bytes of the model's initializers (external ones are not read to count them)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def data_file(path: str | Path) -> Path:
    """Where the external data of the ONNX file at `path` is (or would be) written: `<name>.data` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def file_bytes(path: str | Path) -> int:
    """Bytes on disk of an ONNX file and its external data file, if it has one."""
    path, data = Path(path), data_file(path)
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def _staging(path: Path) -> Path:
    """A fresh folder beside `path` to write a model (and its data) before moving it into place: the data
    of an in-place transform is still being read lazily from `<name>.data` while the new one is written."""
    stage = path.with_name(f".{path.name}.{os.getpid()}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def _commit(stage: Path, path: Path, external: bool) -> Path:
    """Move a staged model (and its data file, written first) into place; drop a stale data file."""
    data = data_file(path)
    if external:
        os.replace(stage / data.name, data)
    os.replace(stage / path.name, path)
    if not external:
        data.unlink(missing_ok=True)  # left by an earlier large version of this file; nothing points at it now
    return path


def save(model: ir.Model, path: str | Path) -> Path:
    """Write `model` to `path` atomically (staged in a folder beside it, then renamed into place), its weights
    in `<name>.data` beside it when they would not fit in one protobuf. Every weight is written into this
    pair, wherever the model read it from, so the pair is self-contained. After an in-place save (`path` is
    the file `model` was loaded from) the model's lazily read weights refer to the replaced file: reload it."""
    path = Path(path)
    stage = _staging(path)
    external = weight_bytes(model) > EXTERNAL_DATA_BYTES
    try:
        if external:  # onnx_ir writes the data file beside the model under the (relative) name given
            ir.save(model, stage / path.name, external_data=data_file(path).name)
        else:
            ir.save(model, stage / path.name)
        return _commit(stage, path, external)
    except OSError as e:
        raise EdgetxError(f"{path}: could not write the model ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save_proto(proto: onnx.ModelProto, path: str | Path) -> Path:
    """`save` for an onnx ModelProto (what onnxruntime.quantization and its converters return): atomic, the
    weights in `<name>.data` beside it when the proto would exceed EXTERNAL_DATA_BYTES. Converting to
    external data moves the tensors' bytes out of `proto` (it is left pointing at the written file)."""
    import onnx

    path = Path(path)
    stage = _staging(path)
    external = sum(t.ByteSize() for t in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    try:
        if external:
            onnx.save_model(proto, str(stage / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_file(path).name, size_threshold=1024, convert_attribute=True)
        else:
            onnx.save_model(proto, str(stage / path.name))
        return _commit(stage, path, external)
    except (OSError, ValueError) as e:
        raise EdgetxError(f"{path}: could not write the model ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def move(src: str | Path, dst: str | Path) -> Path:
    """Rename an ONNX file and its `<name>.data` (if any) to `dst` and `<dst name>.data`. The data file's
    location inside the model is relative (`<name>.data`), so the pair must keep one basename: `src` and
    `dst` must have the same file name when the model has external data."""
    src, dst = Path(src), Path(dst)
    data = data_file(src)
    external = data.is_file()
    if external and src.name != dst.name:
        raise EdgetxError(f"{src}: a model with external data ({data.name}) moves only under its own name, "
                          f"not as {dst.name}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if external:
        os.replace(data, data_file(dst))
    else:
        data_file(dst).unlink(missing_ok=True)
    os.replace(src, dst)
    return dst


def transform_file(src: str | Path, dst: str | Path, passes: Sequence[GraphPass]) -> list[dict]:
    """Load `src`, apply `passes` in order, save to `dst` (which may be `src`); return each pass's record."""
    try:
        model, log = run(load(src), passes)
    except EdgetxError as e:  # say which file the pass could not transform (same error type and fields)
        if not str(e).startswith(str(src)):
            e.args = (f"{src}: {e}", *e.args[1:])
        raise e from None
    save(model, dst)
    release(model)
    return log
