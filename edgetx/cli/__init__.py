"""The `edgetx` command line: thin wrappers over the pipeline's functions, one module per verb group."""

from edgetx.cli.app import main
from edgetx.cli import (backends, build, classify, convert, files, measure, preflight, run, verify,  # noqa: E402,F401
                        vision)  # (register)

__all__ = ["main"]
