"""`edgetx backends`: where bundles can run on this machine, and why not where they cannot."""

from __future__ import annotations

from rich.table import Table

from edgetx.cli.app import main
from edgetx.cli.render import console


@main.command()
def backends() -> None:
    """List the backends edgetx knows and whether each can run here (and why not)."""
    from edgetx.runtimes import list_backends

    table = Table()
    for col in ("backend", "available", "details"):
        table.add_column(col)
    for name, backend in sorted(list_backends().items()):
        status = backend.availability()
        table.add_row(name, "[green]yes[/]" if status.available else "[red]no[/]",
                      f"{backend.description}; {status.reason}")
    console.print(table)
