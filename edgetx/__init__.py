"""edgetx: take a trained PyTorch transformer to a device.

Importing `edgetx` is light (no torch, no onnxruntime); see `edgetx.runtimes` for running a
bundle and `edgetx.build(model, out, ...)` for making one (torch is imported when it runs).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`edgetx.build` without importing it first (the build package is callable)."""
    if name == "build":
        import edgetx.build

        return edgetx.build
    raise AttributeError(f"module 'edgetx' has no attribute {name!r}")
