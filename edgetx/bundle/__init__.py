"""The bundle: one folder per model holding its variants, its golden I/O and a manifest that hash-lists
every file. Loading checks the manifest, every sha256 and the structure of every ONNX file; writing is
atomic. Torch-free (standard library, numpy and jsonschema)."""

from edgetx.bundle.files import MANIFEST, sha256_file, to_json
from edgetx.bundle.npz import read_npz
from edgetx.bundle.manifest import SCHEMA_VERSION, Manifest, Variant
from edgetx.bundle.store import Bundle
from edgetx.bundle.writer import BundleWriter

__all__ = ["MANIFEST", "SCHEMA_VERSION", "Bundle", "BundleWriter", "Manifest", "Variant", "read_npz", "sha256_file",
           "to_json"]
