"""The `edgetx` commands that look at or transform one file or bundle: inspect, optimize, quantize."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from edgetx.bundle import to_json
from edgetx import progress
from edgetx.cli.app import main
from edgetx.cli.render import console, print_candidates, print_mobile, print_onnx, print_quantization


@main.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@click.option("--passes", default="ort-fusions", show_default=True,
              help="Which candidate's passes: ort-fusions, ort-offline-extended, ort-fusions+ort-offline-extended.")
def optimize(src: Path, out: Path, passes: str) -> None:
    """Fuse one ONNX file for onnxruntime and print the op histogram before -> after.

    Inside `edgetx build`, every candidate is verified against the golden I/O and timed, and the
    fastest that passes is kept; this command applies one candidate to a file you give it.

    \b
    Example:
      edgetx optimize dist/edgetx-gpt/fp32/model.onnx -o /tmp/fused.onnx
    """
    from edgetx.build.select import optimize_file

    with progress.stage(f"applying {passes}"):
        log = optimize_file(src, out, passes)
    before, after = log[0]["ops_before"], log[-1]["ops_after"]
    table = Table(title=f"{src.name} -> {out.name}: {sum(before.values())} -> {sum(after.values())} nodes")
    for col in ("op", "before", "after"):
        table.add_column(col)
    for op in sorted(set(before) | set(after), key=lambda o: -max(before.get(o, 0), after.get(o, 0))):
        if before.get(op, 0) != after.get(op, 0):
            table.add_row(op, str(before.get(op, 0)), str(after.get(op, 0)))
    console.print(table)
    for entry in log:
        if entry.get("fusions"):
            console.print(f"{entry['pass']}: " + ", ".join(f"{k} x{v}" for k, v in entry["fusions"].items()))
    console.print(f"wrote {out}")



@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
def inspect(target: Path, as_json: bool) -> None:
    """Show what is inside a bundle or an ONNX file: ops, size, I/O, opset, parity.

    \b
    Examples:
      edgetx inspect dist/edgetx-gpt
      edgetx inspect dist/edgetx-gpt/fp32/model.onnx --json
    """
    from edgetx.onnx_info import inspect_onnx

    if target.is_dir():
        from edgetx.bundle import Bundle

        bundle = Bundle.load(target)
        info = {"bundle": str(target), "model": bundle.model, "variants": {}}
        for name, variant in bundle.variants.items():
            info["variants"][name] = {"precision": variant.precision, "parity_passed": (variant.parity or {}).get("passed"),
                                      "parity_max_abs": (variant.parity or {}).get("max_abs"),
                                      **inspect_onnx(bundle.file(variant.file))}
        info["provenance"] = bundle.manifest.provenance
        info["optimization"] = bundle.manifest.optimization
        info["quantization"] = bundle.manifest.quantization
    else:
        info = inspect_onnx(target)
    if as_json:
        click.echo(to_json(info))
        return
    if target.is_dir():
        info["manifest"] = bundle.manifest
    for name, entry in (info["variants"].items() if "variants" in info else [(target.name, info)]):
        print_onnx(name, entry)
    if info.get("optimization"):
        print_candidates(info["optimization"])
    if info.get("manifest"):
        print_mobile(info["manifest"])
        print_quantization(info.pop("manifest"))
    if "model" in info:
        facts = ", ".join(f"{k}={v}" for k, v in info["model"].items())
        console.print(f"[bold]model[/]: {facts}")
        versions = info["provenance"].get("versions", {})
        console.print(f"[bold]provenance[/]: {info['provenance'].get('exporter')}, opset "
                      f"{info['provenance'].get('opset')}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))



@main.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--scheme", "scheme_name", required=True,
              help="int8, int8-per-tensor, int8-weight-only, int4, int4-sym, int4-hqq, fp16 (calibrated schemes, "
                   "static int8 and int4-gptq, need calibration data: use them through `edgetx build --quantize`).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@click.option("--exclude", multiple=True, help="Node name to keep in fp32 (repeatable).")
def quantize(src: Path, scheme_name: str, out: Path, exclude: tuple[str, ...]) -> None:
    """Quantize one ONNX file with one scheme (no gate: a bundle build gates every variant).

    \b
    Examples:
      edgetx quantize dist/edgetx-gpt/fp32/model.onnx --scheme int4 -o /tmp/int4.onnx
      edgetx quantize model.onnx --scheme int8 --exclude node_MatMul_12 -o model.int8.onnx
    """
    from edgetx.quant.apply import quantize_file

    with progress.stage(f"quantizing with {scheme_name}"):
        info = quantize_file(scheme_name, src, out, list(exclude))
    console.print(f"wrote {out}: {info['bytes_before'] / 1e6:.2f} MB -> {info['bytes_after'] / 1e6:.2f} MB "
                  f"({info['scheme']['method']}, {info['scheme']['options']})")

