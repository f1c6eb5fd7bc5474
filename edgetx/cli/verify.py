"""`edgetx verify`: parity of a bundle's variants against PyTorch's golden answers, on any backend."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from edgetx.bundle import to_json
from edgetx import progress
from edgetx.cli.app import main
from edgetx.cli.render import console, print_matrix, print_parity
from edgetx.errors import EdgetxError
from edgetx.runtimes.backend import REFERENCE_BACKEND


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--variant", "variants", multiple=True, help="Variant(s) to check (default: all).")
@click.option("--backend", "backends", multiple=True,
              help="Backend(s) to run on (default: ort-cpu; see `edgetx backends`).")
@click.option("--all", "all_backends", is_flag=True, help="Every variant on every backend available here.")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: the backend's).")
@click.option("--explain", is_flag=True, help="Find where a variant parts ways with a reference, block by block.")
@click.option("--against", default=None,
              help="With --explain: reference side: a variant, an .onnx file, or 'pytorch' (default: fp32, "
                   "or PyTorch for fp32).")
@click.option("--against-backend", default=None, help="With --explain: run the reference side on this backend.")
@click.option("--rel-tol", type=float, default=None, help="With --explain: divergence threshold, relative to "
              "each value's scale (default 1e-4).")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON on stdout.")
@click.option("--markdown", is_flag=True, help="Print the reports as a markdown table on stdout.")
def verify(bundle: Path, variants: tuple[str, ...], backends: tuple[str, ...], all_backends: bool,
           threads: int | None, explain: bool, against: str | None, against_backend: str | None,
           rel_tol: float | None, as_json: bool, markdown: bool) -> None:
    """Check BUNDLE's variants against the golden I/O captured from PyTorch.

    Exit status 1 if any check fails (with --explain: if a divergence is found).

    \b
    Examples:
      edgetx verify dist/edgetx-gpt --json > parity.json
      edgetx verify dist/edgetx-gpt --all                      # variant x backend matrix
      edgetx verify dist/edgetx-gpt --explain --variant int8   # where does int8 leave fp32?
      edgetx verify dist/edgetx-gpt --explain --against pytorch
    """
    from edgetx.bundle import Bundle

    loaded = Bundle.load(bundle)
    if explain:
        _explain(loaded, variants, backends, against, against_backend, rel_tol, as_json, markdown)
        return
    from edgetx.verify.report import to_markdown
    from edgetx.verify.parity import verify_matrix

    chosen = None if all_backends else list(backends) or [REFERENCE_BACKEND]
    with progress.stage("verifying"):
        reports = verify_matrix(loaded, backends=chosen, threads=threads, variants=list(variants) or None)
    reports = [r.to_dict() for r in reports]
    for backend in chosen or []:  # a backend the user named that ran nothing is an error, not a quiet skip
        rows = [r for r in reports if r["backend"] == backend]
        if rows and all(r["skipped"] for r in rows):
            raise EdgetxError(f"nothing ran on {backend}: " + "; ".join(sorted({f"variant {r['variant']!r} has "
                                                                               + r["skipped"] for r in rows})))
    if as_json:
        click.echo(to_json(reports))
    elif markdown:
        click.echo(to_markdown(reports))
    else:
        print_parity(reports)
        if all_backends or len(chosen or []) > 1:
            print_matrix(reports)
    if not all(r["passed"] or r["skipped"] for r in reports):
        console.print("[bold red]parity failed[/]")
        sys.exit(1)



def _explain(bundle, variants, backends, against, against_backend, rel_tol, as_json, markdown) -> None:
    from edgetx.verify.explain import explain_bundle, render

    variant = variants[0] if variants else "fp32"
    backend = backends[0] if backends else REFERENCE_BACKEND
    kwargs = {"rel_tol": rel_tol} if rel_tol is not None else {}
    with progress.stage(f"comparing {variant} block by block"):
        report = explain_bundle(bundle, variant, against=against, backend=backend, against_backend=against_backend,
                                **kwargs)
    if as_json:
        click.echo(to_json(report.to_dict()))
    elif markdown:
        click.echo(report.to_markdown())
    else:
        table = Table(title=f"{report.side_a} vs {report.side_b}")
        for col in ("where", "values compared", "worst diff / scale", "first value over tolerance"):
            table.add_column(col)
        for row in render(report):
            table.add_row(*row)
        console.print(table)
        console.print(escape(report.summary()), highlight=False, soft_wrap=True)
    if report.diverged:
        sys.exit(1)

