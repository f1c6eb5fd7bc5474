"""Rich tables for the CLI: parity reports, the variant x backend matrix, graph candidates,
and what is inside an ONNX file. Printed on stderr so stdout stays clean for text and JSON."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edgetx.bundle import Manifest
from edgetx.kinds import ModelKind, get_kind
from edgetx.verify.report import label_of

console = Console(stderr=True)
if not console.is_terminal:  # logs and CI: wide enough that parity tables do not wrap
    console.width = 120


def print_candidates(selection: dict) -> None:
    candidates = selection["candidates"]
    timings = [k for k in dict.fromkeys(k for c in candidates for k in c if k.endswith("_ms") and k != "load_ms")]
    table = Table(title=f"fp32 graph candidates on {selection['target']} (kept: {selection['winner']})")
    for col in ("candidate", "fusions", "nodes", "parity", *(k.removesuffix("_ms").replace("_", " ") + " ms"
                                                             for k in timings), ""):
        table.add_column(col)
    for c in candidates:
        log = c.get("log") or []
        fusions = ", ".join(f"{k} {v}" for entry in log for k, v in entry.get("fusions", {}).items()) or "-"
        nodes = f"{sum(log[0]['ops_before'].values())} -> {sum(log[-1]['ops_after'].values())}" if log else "-"
        parity = ("[green]pass[/]" if c.get("parity_passed") else
                  f"[red]FAIL[/] {'; '.join(c.get('failed_checks') or [c.get('error', '')])}")
        if c.get("restriction"):
            parity += f" ({c['restriction']})"
        cells = [f"{c[k]:.2f}" if k in c else "-" for k in timings]
        table.add_row(c["name"], fusions, nodes, parity, *cells, "[bold]kept[/]" if c.get("kept") else "")
    console.print(table)


def print_quantization(manifest: Manifest) -> None:
    """Per scheme: written or not, size, gate metrics, nodes kept in fp32 by mixed precision."""
    results = manifest.quantization_results
    if not results:
        return
    kind = get_kind(manifest.kind, "manifest.json")
    variants = manifest.variants
    fp32_bytes = variants["fp32"].bytes or 0
    table = Table(title="quantized variants (gated against fp32 on the bundle's held-out data)")
    for col in ("scheme", "written", "MB", "vs fp32", "gate metrics", "kept in fp32", "ms", "missed by"):
        table.add_column(col)
    for name, r in results.items():
        if "not_applicable" in r:
            table.add_row(name, "[dim]n/a[/]", "-", "-", "-", "-", "-", r["not_applicable"])
            continue
        written = name in variants
        kept = f"{len(r['kept_fp32_nodes'])} of {r['quantizable_nodes']}"
        if r.get("eight_bit_nodes"):  # int4-mixed: moved to 8-bit, not kept in fp32
            kept += f" ({len(r['eight_bit_nodes'])} at 8-bit)"
        rejected = r.get("rejected_by_parity")
        latency = {k: v for k, v in (r.get("latency") or {}).items() if k != "score_ms"}
        ms = ", ".join(f"{k.removesuffix('_ms')} {v:.2f}" for k, v in latency.items()) or "-"
        table.add_row(name, "[green]yes[/]" if written else "[red]no[/]", f"{r['bytes'] / 1e6:.1f}",
                      f"{r['bytes'] / fp32_bytes:.2f}x" if fp32_bytes else "-", kind.gate_summary(r["gate"]), kept, ms,
                      "; ".join(r["missed_by"] or rejected or []) or "-")
    console.print(table)


def print_parity(reports: list[dict]) -> None:
    table = Table(title="parity vs PyTorch golden I/O")
    for col in ("variant", "backend", "check", "max |diff|", "tolerance", "detail", "result"):
        table.add_column(col)
    for r in reports:
        for c in r["checks"]:
            diff = "-" if c["max_abs"] is None else f"{c['max_abs']:.2e}"
            table.add_row(r["variant"], r["backend"], c["name"], diff, label_of(r),
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
            cells.append(_matrix_cell(r))
        table.add_row(variant, *cells)
    console.print(table)
    notes = sorted({r["skipped"] for r in reports if r.get("skipped")})
    for note in notes:
        console.print(f"[dim]skipped: {note}[/]")


def _matrix_cell(report: dict | None) -> str:
    """pass/FAIL, the largest difference from PyTorch, and greedy-token agreement when decoded."""
    if report is None:
        return "-"
    if report.get("skipped"):
        return "[dim]skipped[/]"
    cell = ("[green]pass[/]" if report["passed"] else "[red]FAIL[/]") + f" {report['max_abs']:.1e}"
    greedy = next((c["tokens"] for c in report["checks"] if c.get("tokens")), None)
    fixed = next((c for c in report["checks"] if c["name"] == "vs ort-cpu at fixed dims"), None)
    placement = report.get("placement")
    return (cell + (f" greedy {greedy[0]}/{greedy[1]}" if greedy else "") + (" vs ort-cpu at fixed dims" if fixed else "")
            + (f"\n{placement['on_backend']}/{placement['nodes']} nodes on "
               f"{placement['provider'].removesuffix('ExecutionProvider')}, {placement['partitions']} part." if placement else ""))


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


def print_bench(results: list[dict], kind: ModelKind) -> None:
    """The kind's bench tables (decoders: timings and the memory-bandwidth floor; encoders: per batch)."""
    if not results:
        return
    for bench_table in kind.bench_rows(results):
        table = Table(title=bench_table.title)
        first = max([len(bench_table.columns[0])] + [len(row[0]) for row in bench_table.rows])
        for i, col in enumerate(bench_table.columns):  # the variant column whole: int8-weight-only vs -a8
            table.add_column(col, **({"min_width": first, "no_wrap": True} if i == 0 else {}))
        for row in bench_table.rows:
            table.add_row(*row)
        console.print(table)


def print_report(points) -> None:
    """The report's variants: size, accuracy, latency, gate, Pareto membership."""
    table = Table(title="variants: accuracy x latency x size")
    for col in ("variant", "precision", "MB", "accuracy", "latency ms", "gate", "Pareto"):
        table.add_column(col)
    for p in points:
        table.add_row(p.variant, p.precision, f"{p.size_mb:.1f}", f"{p.accuracy:.4g}", f"{p.latency_ms:.2f}",
                      p.gate, "[green]yes[/]" if p.pareto else "")
    console.print(table)


def print_mobile(manifest: Manifest) -> None:
    """The ORT-format files and the NNAPI / CoreML usability report stored by `edgetx convert`."""
    mobile = manifest.mobile
    if not mobile:
        return
    table = Table(title=f"mobile: .ort files, NNAPI / CoreML coverage (supported nodes / nodes, partitions; "
                        f"operators for a reduced build: {mobile.get('required_operators', '-')})")
    for col in ("variant", ".ort", "EP", "as exported", "if shapes were fixed", "unsupported ops"):
        table.add_column(col)
    for name, variant in manifest.variants.items():
        ort_file = (variant.formats or {}).get("ort", "-")
        report = (mobile.get("usability") or {}).get(name)
        if not report:
            table.add_row(name, ort_file, "-", "-", "-", "-")
            continue
        if "error" in report:
            table.add_row(name, ort_file, "-", f"check failed: {report['error']}", "-", "-")
            continue
        for i, (ep, r) in enumerate(report["eps"].items()):
            table.add_row(name if i == 0 else "", ort_file if i == 0 else "", ep,
                          f"{r['supported_nodes']}/{r['nodes']}, {r['partitions']} ({r['verdict']})",
                          f"{r['supported_nodes_if_fixed']}/{r['nodes']}, {r['partitions_if_fixed']} "
                          f"({r['verdict_if_fixed']})", ", ".join(o.split(":")[-1] for o in r["unsupported_ops"][:6])
                          + (" ..." if len(r["unsupported_ops"]) > 6 else ""))
    console.print(table)


def write_npy(path, vectors) -> None:
    """Save vectors to a .npy file atomically (a .partial file renamed into place) and say what was written."""
    import numpy as np

    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        np.save(f, vectors)
    tmp.replace(path)
    console.print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} float32 to {path}")
