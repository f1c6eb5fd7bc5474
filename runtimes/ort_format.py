"""The ORT mobile format: a variant's `.ort` file (what onnxruntime's mobile and reduced-operator
builds load) run by onnxruntime's CPU execution provider here.

`edgetx convert BUNDLE --to ort` writes the files; a bundle without them reports which command adds them.
"""

from __future__ import annotations

from edgetx.runtimes.base import register_backend
from edgetx.runtimes.ort_cpu import OrtCpuBackend


class OrtFormatBackend(OrtCpuBackend):
    name = "ort-format"
    description = "onnxruntime CPU EP loading the variant's .ort (mobile format) file"
    model_format = "ort"


register_backend(OrtFormatBackend())
