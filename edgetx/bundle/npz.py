"""Reading the arrays of a bundle's .npz files (golden I/O, quantization data) safely: no pickle, and
headers checked against the data before anything is allocated."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from edgetx.errors import BundleError


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, without pickle; each array's header is checked against the size
    of its data first, so a damaged or hostile header cannot ask for a huge allocation."""
    fix = "rebuild the bundle (or re-copy it if it was damaged in transit)"
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.file_size > 1000 * max(info.compress_size, 1) + (1 << 20):
                    raise BundleError(f"{path}: member {info.filename!r} would expand {info.compress_size} bytes "
                                      f"to {info.file_size} (a zip bomb?); {fix}")
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in ((1, 0), (2, 0)):
                        raise BundleError(f"{path}: member {info.filename!r} is .npy format {version}; "
                                          "edgetx reads versions 1.0 and 2.0")
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read_header(f)
                    if dtype.hasobject:
                        raise BundleError(f"{path}: member {info.filename!r} holds Python objects (pickle); "
                                          "edgetx never loads pickle")
                    need = math.prod(shape) * dtype.itemsize + f.tell()
                    if need != info.file_size:
                        raise BundleError(f"{path}: member {info.filename!r} declares shape {shape} of {dtype} "
                                          f"({need} bytes with its header) but holds {info.file_size}; {fix}")
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except BundleError:
        raise
    except Exception as e:  # numpy's and zipfile's parsers raise a dozen types (ValueError, TokenError, ...)
        raise BundleError(f"{path}: not a readable .npz file ({type(e).__name__}: {e}); {fix}") from None

