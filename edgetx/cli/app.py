"""The `edgetx` command group: edgetx's own errors become one clear line (exit status 1), not a traceback.
Each verb lives in a module of this package and registers itself on `main`."""

from __future__ import annotations

import sys

import click
from rich.markup import escape

from edgetx import __version__, progress
from edgetx.cli.render import console
from edgetx.errors import EdgetxError


class _Group(click.Group):
    """Turns edgetx's own errors into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgetxError as e:
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(1)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]; nothing was left half-written")
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgetx")
def main() -> None:
    """edgetx: take a trained PyTorch transformer to a device.

    \b
    Typical use:
      edgetx build --out dist/edgetx-gpt            # export + golden I/O + verify
      edgetx verify dist/edgetx-gpt                 # parity against PyTorch's answers
      edgetx generate dist/edgetx-gpt --prompt "def main():"
      edgetx inspect dist/edgetx-gpt
    """
    progress.show_on(console)  # stages, progress bars and log lines of every verb go to the console

