"""The one adapter between ONNX files and passes, used at stage boundaries only (the pipeline, the CLI,
and the onnxruntime quantizer calls that need paths): load, save atomically, or run passes file to file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgetx.errors import EdgetxError
from edgetx.passes.base import GraphPass, ir, run

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


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save(model: ir.Model, path: str | Path) -> Path:
    """Write `model` to `path` atomically (a .partial file renamed into place), its weights in
    `<name>.data` beside it when they would not fit in one protobuf."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    external = _weight_bytes(model) > EXTERNAL_DATA_BYTES
    data = path.name + ".data"
    try:
        if external:  # onnx_ir writes the data file beside the model under the name given
            ir.save(model, partial, external_data=data)
        else:
            ir.save(model, partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def transform_file(src: str | Path, dst: str | Path, passes: Sequence[GraphPass]) -> list[dict]:
    """Load `src`, apply `passes` in order, save to `dst` (which may be `src`); return each pass's record."""
    try:
        model, log = run(load(src), passes)
    except EdgetxError as e:  # say which file the pass could not transform (same error type and fields)
        if not str(e).startswith(str(src)):
            e.args = (f"{src}: {e}", *e.args[1:])
        raise e from None
    save(model, dst)
    return log
