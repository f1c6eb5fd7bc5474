"""`python -m edgetx.cli`: the `edgetx` command."""

from edgetx.cli import main

main()
