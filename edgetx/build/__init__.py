"""Building a bundle: the pipeline (export -> passes -> select -> quantize/gate -> verify -> write),
graph-candidate selection, and converting a written bundle (ORT format, fixed shapes)."""

from edgetx.build.pipeline import build

__all__ = ["build"]
