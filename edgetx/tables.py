"""Rich tables for the CLI: parity reports, the variant x backend matrix, graph candidates,
and what is inside an ONNX file. Printed on stderr so stdout stays clean for text and JSON."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
if not console.is_terminal:  # logs and CI: wide enough that parity tables do not wrap
    console.width = 120


def print_candidates(selection: dict) -> None:
    table = Table(title=f"fp32 graph candidates on {selection['target']} (kept: {selection['winner']})")
    for col in ("candidate", "fusions", "nodes", "parity", "prefill ms", "decode ms", "batch ms", "score ms", ""):
        table.add_column(col)
    for c in selection["candidates"]:
        log = c.get("log") or []
        fusions = ", ".join(f"{k} {v}" for entry in log for k, v in entry.get("fusions", {}).items()) or "-"
        nodes = f"{sum(log[0]['ops_before'].values())} -> {sum(log[-1]['ops_after'].values())}" if log else "-"
        parity = ("[green]pass[/]" if c.get("parity_passed") else
                  f"[red]FAIL[/] {'; '.join(c.get('failed_checks') or [c.get('error', '')])}")
        if c.get("restriction"):
            parity += f" ({c['restriction']})"
        cells = [f"{c[k]:.2f}" if k in c else "-" for k in ("prefill_ms", "decode_ms", "batch_ms", "score_ms")]
        table.add_row(c["name"], fusions, nodes, parity, *cells, "[bold]kept[/]" if c.get("kept") else "")
    console.print(table)


def print_parity(reports: list[dict]) -> None:
    table = Table(title="parity vs PyTorch golden I/O")
    for col in ("variant", "backend", "check", "max |diff|", "tolerance", "detail", "result"):
        table.add_column(col)
    for r in reports:
        for c in r["checks"]:
            diff = "-" if c["max_abs"] is None else f"{c['max_abs']:.2e}"
            table.add_row(r["variant"], r["backend"], c["name"], diff, f"{r['tolerance']['max_abs']:.0e}",
                          c["detail"], "[green]pass[/]" if c["passed"] else "[bold red]FAIL[/]")
    console.print(table)


def print_matrix(reports: list[dict]) -> None:
    backends = sorted({r["backend"] for r in reports})
    table = Table(title="variant x backend")
    table.add_column("variant")
    for b in backends:
        table.add_column(b)
    for variant in dict.fromkeys(r["variant"] for r in reports):
        cells = []
        for b in backends:
            r = next((r for r in reports if r["variant"] == variant and r["backend"] == b), None)
            cells.append("-" if r is None else ("[green]pass[/]" if r["passed"] else "[red]FAIL[/]")
                         + f" {r['max_abs']:.1e}")
        table.add_row(variant, *cells)
    console.print(table)


def print_onnx(name: str, info: dict) -> None:
    head = f"[bold]{name}[/]: {info['file']}  {info['bytes'] / 1e6:.2f} MB, {info['parameters'] / 1e6:.2f}M params, " \
           f"{info['nodes']} nodes, opsets {info['opsets']}"
    if info.get("precision"):
        verdict = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "not run"}[info.get("parity_passed")]
        head += f", precision {info['precision']}, parity {verdict}"
        if info.get("parity_max_abs") is not None:
            head += f" (max |diff| {info['parity_max_abs']:.2e})"
    console.print(head)
    io_table = Table(show_header=True, box=None)
    for col in ("", "name", "dtype", "shape"):
        io_table.add_column(col)
    for kind in ("inputs", "outputs"):
        rows = info[kind]
        shown = rows if len(rows) <= 8 else rows[:5]
        for v in shown:
            io_table.add_row(kind[:-1], v["name"], v["dtype"], str(v["shape"]))
        if len(rows) > len(shown):
            io_table.add_row(kind[:-1], f"... {len(rows) - len(shown)} more", "", "")
    console.print(io_table)
    ops = Table(title="op histogram", show_header=True)
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info["ops"].items():
        ops.add_row(op, str(count))
    console.print(ops)
