"""`edgetx backends` (where bundles can run here, and why not where they cannot) and `edgetx provision`
(install what a backend needs, into the one root both use)."""

from __future__ import annotations

import importlib
from pathlib import Path

import click
from rich.table import Table

from edgetx.cli.app import main
from edgetx.cli.render import console
from edgetx.errors import EdgetxError


@main.command()
def backends() -> None:
    """List the backends edgetx knows, whether each can run here (and why not), and where its
    provisioned environment lives (`edgetx provision NAME` puts it there)."""
    from edgetx.runtimes import list_backends
    from edgetx.runtimes.environment import environment_root

    table = Table()
    for col in ("backend", "available", "details", "environment"):
        table.add_column(col)
    for name, backend in sorted(list_backends().items()):
        status = backend.availability()
        root = str(environment_root(backend.environment)) if backend.environment else "-"
        table.add_row(name, "[green]yes[/]" if status.available else "[red]no[/]",
                      f"{backend.description}; {status.reason}", root)
    console.print(table)


def _installers() -> dict[str, str]:
    """Environment name -> installer module, over every registered backend and the toolchains that are not
    backends (edgetx.runtimes.environment.TOOLCHAINS: the native verifier's)."""
    from edgetx.runtimes import list_backends
    from edgetx.runtimes.environment import TOOLCHAINS

    return {**{b.environment: b.installer for b in list_backends().values() if b.environment and b.installer},
            **TOOLCHAINS}


@main.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every backend environment edgetx knows.")
@click.option("--force", is_flag=True, help="Rebuild the environment (downloads stay cached).")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Install here instead of the usual root (with one NAME; then set EDGETX_<NAME>_ROOT to use it).")
def provision(names: tuple[str, ...], all_: bool, force: bool, root: Path | None) -> None:
    """Install what backend NAME needs to run here (idempotent: nothing to do when it is there).

    Environments go to $EDGETX_HOME/NAME (default ~/.cache/edgetx/NAME) unless EDGETX_<NAME>_ROOT
    points elsewhere; `edgetx backends` and `make provision-NAME` use the same place. Downloads are
    cached there, so a re-run downloads nothing.

    \b
    Examples:
      edgetx provision web arm64            # what `make test` needs
      edgetx provision qnn openvino xnnpack # the vendor stacks
      edgetx provision native               # headers and libraries of the C verifier (runtimes/native/)
      edgetx provision --all
      edgetx provision arm64 --force        # rebuild it (e.g. after upgrading onnxruntime)
    """
    from edgetx.runtimes.environment import environment_root

    installers = _installers()
    chosen = list(installers) if all_ else list(dict.fromkeys(names))
    if not chosen:
        raise EdgetxError(f"name a backend environment to provision ({', '.join(sorted(installers))}) or pass --all")
    from edgetx.runtimes import list_backends

    aliases = {n: b.environment for n, b in list_backends().items() if b.environment}  # arm64-ort -> arm64
    unknown = [n for n in chosen if aliases.get(n, n) not in installers]
    if unknown:
        raise EdgetxError(f"nothing to provision for {', '.join(unknown)}; environments: {', '.join(sorted(installers))} "
                          "(ort-cpu and ort-format need nothing beyond `pip install edgetx`)")
    if root and len(chosen) != 1:
        raise EdgetxError("--root goes with one NAME")
    for name in dict.fromkeys(aliases.get(n, n) for n in chosen):
        target = root.expanduser().absolute() if root else environment_root(name)
        importlib.import_module(installers[name]).provision(target, force)
        console.print(f"[green]✓[/] {name}: {target / 'env'}")
