"""edgetx: take a trained PyTorch transformer to a device.

Importing `edgetx` is light (no torch, no onnxruntime); see `edgetx.runtimes` for running a
bundle and `edgetx.build` for making one.
"""

__version__ = "0.1.0"
