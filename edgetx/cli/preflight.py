"""`edgetx preflight`: will a bundle run on a backend, where do its nodes go, and what to change.
Registered on the `edgetx` group of edgetx.cli.app."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from edgetx import progress
from edgetx.bundle import to_json
from edgetx.cli.app import main
from edgetx.cli.render import console


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--backend", required=True, help="Backend to check (one that reports placement: qnn, openvino, xnnpack).")
@click.option("--variant", "variants", multiple=True, help="Variant(s) to check (default: all).")
@click.option("--apply", "apply_", is_flag=True, help="Apply the safe remedies to BUNDLE (fixed-shape copies, finite "
              "masks), each checked against the dynamic variant, then check again.")
@click.option("--shape", default=None, help="With --apply: the fixed dims, e.g. batch=1,seq=128 (default: "
              "batch=1,seq=128 for encoders, batch=1,seq=1,past=127 for decoders).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--markdown", is_flag=True, help="Print the report as markdown on stdout.")
def preflight(bundle: Path, backend: str, variants: tuple[str, ...], apply_: bool, shape: str | None, as_json: bool,
              markdown: bool) -> None:
    """Run each variant of BUNDLE on a backend and report placement per op type, fallbacks, partitions
    and a remedy per problem.

    Exit status 1 if a variant failed to load or run, or disagreed with ort-cpu.

    \b
    Examples:
      edgetx preflight dist/minilm --backend qnn
      edgetx preflight dist/minilm --backend qnn --variant fp32 --apply --shape batch=1,seq=128
      edgetx preflight dist/edgetx-gpt --backend xnnpack --markdown > preflight.md
    """
    from edgetx.bundle import Bundle
    from edgetx.build.convert import parse_dims
    from edgetx.verify.preflight import preflight as run_preflight
    from edgetx.verify.preflight import to_markdown

    loaded = Bundle.load(bundle)
    dims = parse_dims(shape, loaded.io) if shape else None
    if shape and not apply_:
        raise click.UsageError("--shape goes with --apply")
    with progress.stage(f"pre-flight on {backend}"):
        results = run_preflight(loaded, backend, list(variants) or None, dims, apply_)
    if as_json:
        click.echo(to_json([r.to_dict() for r in results]))
    elif markdown:
        click.echo(to_markdown(results, backend))
    else:
        for r in results:
            _print(r, backend)
    if any(r.error or (r.parity and not r.parity["passed"]) for r in results):
        sys.exit(1)


def _print(r, backend: str) -> None:
    title = f"{r.variant} ({r.precision}) on {backend}: {r.file}, {r.shapes} shapes"
    if r.nodes:
        title += f" — {r.on_backend}/{r.nodes} nodes on {r.provider}, {r.partitions} partition(s)"
    table = Table(title=escape(title), title_justify="left")
    for col in ("op type", "nodes", "on backend", "on CPU", "provider's reason"):
        table.add_column(col)
    for op, c in r.by_op.items():
        style = "" if not c["fallback"] else "yellow"
        table.add_row(op, str(c["total"]), str(c["on_backend"]), f"[{style}]{c['fallback']}[/]" if style else "0",
                      escape(c["reason"] or ""))
    if r.by_op:
        console.print(table)
    else:
        console.print(f"[bold]{escape(title)}[/]")
    if r.run_seconds is not None:
        console.print(f"one run: {r.run_seconds:.2f} s")
    if r.parity:
        console.print(("[green]parity pass[/]: " if r.parity["passed"] else "[red]parity FAIL[/]: ") + escape(r.parity["detail"]))
    if r.error:
        console.print(f"[red]error[/]: {escape(r.error.splitlines()[0][:400])}")
    for p in r.problems:
        state = " [green](applied)[/]" if p.applied else " [cyan](safe: --apply)[/]" if p.safe else ""
        console.print(f"[bold]{p.kind}[/]{state}: {escape(p.detail)}\n  [dim]remedy:[/] {escape(p.remedy)}")
    if not r.problems and not r.error:
        console.print("[green]no problems found[/]")
    console.print()
