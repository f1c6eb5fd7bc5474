"""The `edgetx` commands that look at or transform files and bundles: inspect, optimize,
quantize, bench, backends. Registered on the `edgetx` group defined in edgetx.cli."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from edgetx.cli import main
from edgetx.bundle import to_json
from edgetx.errors import EdgetxError
from edgetx.tables import (console, print_bench, print_candidates, print_matrix, print_mobile, print_onnx,
                           print_quantization, print_report)


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
    from edgetx.optimize import optimize_file

    with console.status(f"applying {passes} ..."):
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
        info["provenance"] = bundle.manifest["provenance"]
        info["optimization"] = bundle.manifest.get("optimization")
        info["quantization"] = bundle.manifest.get("quantization")
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
              help="int8, int8-per-tensor, int8-weight-only, int4, int4-sym, int4-hqq, fp16 (static int8 schemes "
                   "need calibration data: use them through `edgetx build --quantize`).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="ONNX file to write.")
@click.option("--exclude", multiple=True, help="Node name to keep in fp32 (repeatable).")
def quantize(src: Path, scheme_name: str, out: Path, exclude: tuple[str, ...]) -> None:
    """Quantize one ONNX file with one scheme (no gate: a bundle build gates every variant).

    \b
    Examples:
      edgetx quantize dist/edgetx-gpt/fp32/model.onnx --scheme int4 -o /tmp/int4.onnx
      edgetx quantize model.onnx --scheme int8 --exclude node_MatMul_12 -o model.int8.onnx
    """
    from edgetx.quantize import quantize_file

    with console.status(f"quantizing with {scheme_name} ..."):
        info = quantize_file(scheme_name, src, out, list(exclude))
    console.print(f"wrote {out}: {info['bytes_before'] / 1e6:.2f} MB -> {info['bytes_after'] / 1e6:.2f} MB "
                  f"({info['scheme']['method']}, {info['scheme']['options']})")


def _ints(text: str, allow_default: bool = False) -> tuple:
    try:
        return tuple(None if allow_default and t.strip() == "default" else int(t) for t in text.split(","))
    except ValueError:
        raise EdgetxError(f"expected comma-separated integers, got {text!r}") from None


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-p", "--prompt-tokens", default=128, show_default=True, help="Decoders: prompt length.")
@click.option("-n", "--new-tokens", default=64, show_default=True, help="Decoders: tokens to generate.")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Encoders: batch sizes.")
@click.option("--seq-lens", default="128", show_default=True, help="Encoders: sequence lengths.")
@click.option("--threads", "threads_text", default="default", show_default=True,
              help="Thread counts to sweep, e.g. 1,2 ('default' = the backend's).")
@click.option("--variant", "variants", multiple=True, help="Variant(s) (default: all).")
@click.option("--backend", default="ort-cpu", show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--warmup", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("--no-save", is_flag=True, help="Do not store the results in the bundle's manifest.")
def bench(bundle: Path, prompt_tokens: int, new_tokens: int, batch_sizes: str, seq_lens: str, threads_text: str,
          variants: tuple[str, ...], backend: str, repeats: int, warmup: int, as_json: bool, no_save: bool) -> None:
    """Measure BUNDLE's variants on a backend (torch-free; runs on a device).

    \b
    Examples:
      edgetx bench dist/smollm2 -p 128 -n 64 --threads 1,2
      edgetx bench dist/minilm --batch-sizes 1,8,32 --seq-lens 64,128 --json > bench.json
    """
    from edgetx.bench import BenchConfig
    from edgetx.bench import bench as run_bench
    from edgetx.bundle import Bundle

    loaded = Bundle.load(bundle)
    if repeats < 1 or warmup < 0:
        raise EdgetxError("--repeats must be >= 1 and --warmup >= 0")
    cfg = BenchConfig(prompt_tokens, new_tokens, _ints(batch_sizes), _ints(seq_lens), warmup, repeats)
    with console.status("benchmarking ..."):
        results = run_bench(loaded, list(variants) or None, backend, _ints(threads_text, allow_default=True), cfg)
    if as_json:
        click.echo(to_json(results))
    else:
        print_bench(results)
    if not no_save:
        stored = dict(loaded.manifest.get("bench") or {})
        stored.update({f"{r['variant']}@{r['backend']}@threads={r['threads']}": r for r in results})
        loaded.update_manifest("bench", stored)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["ort", "fixed"]), required=True,
              help="ort: onnxruntime's mobile format (.ort per variant + required_operators.config); "
                   "fixed: fixed-shape copies (model.fixed.onnx) for backends without dynamic shapes.")
@click.option("--shape", "shape", default=None, help="With --to fixed: every symbolic dim, e.g. "
              "batch=1,seq=128 (encoders) or batch=1,seq=1,past=127 (a decoder step).")
@click.option("--variant", "variants", multiple=True, help="Variant(s) to convert (default: all).")
@click.option("--no-verify", is_flag=True, help="--to ort: skip checking the .ort files against the golden I/O.")
def convert(bundle: Path, target: str, shape: str | None, variants: tuple[str, ...], no_verify: bool) -> None:
    """Add other serializations of BUNDLE's variants, each checked before it is recorded.

    --to ort writes a .ort file beside each variant's model.onnx, the operator list for an
    onnxruntime reduced build (mobile/required_operators.config), and an NNAPI/CoreML usability
    report per variant (shown by `edgetx inspect`); then runs each .ort on the ort-format backend.

    --to fixed writes model.fixed.onnx with every symbolic dim set (--shape), checks it against the
    dynamic variant on the same inputs, and records the dims in the manifest.

    \b
    Examples:
      edgetx convert dist/edgetx-gpt --to ort
      edgetx verify dist/edgetx-gpt --backend ort-format
      edgetx convert dist/minilm --to fixed --shape batch=1,seq=128
      edgetx convert dist/edgetx-gpt --to fixed --shape batch=1,seq=1,past=127 --variant fp32
    """
    from edgetx.bundle import Bundle

    loaded = Bundle.load(bundle)
    chosen = list(variants) or None
    if target == "fixed":
        _convert_fixed(loaded, shape, chosen)
        return
    if shape:
        raise EdgetxError("--shape goes with --to fixed")
    from edgetx.convert import mobile_report, to_ort
    from edgetx.parity import verify as run_verify

    with console.status("converting to the ORT format ..."):
        added = to_ort(loaded, chosen)
    with console.status("checking NNAPI / CoreML usability ..."):
        mobile_report(loaded, chosen)
    print_mobile(loaded.manifest)
    console.print(f"wrote {', '.join(added['ort'].values())} and {added['required_operators']}")
    if no_verify:
        return
    with console.status("verifying the .ort files on ort-format ..."):
        reports = [r.to_dict() for r in run_verify(Bundle.load(bundle), backend="ort-format", variants=chosen)]
    print_matrix(reports)
    if not all(r["passed"] for r in reports):
        console.print("[bold red]parity failed on the .ort files[/] (`edgetx verify BUNDLE --backend ort-format` "
                      "shows each check)")
        sys.exit(1)


def _convert_fixed(bundle, shape: str | None, variants: list[str] | None) -> None:
    from edgetx.fixed_shape import add_fixed, parse_dims, symbols

    if not shape:
        raise EdgetxError(f"--to fixed needs --shape with this model's dims ({', '.join(symbols(bundle.io))}), "
                          "e.g. --shape " + ",".join(f"{s}=1" for s in symbols(bundle.io)))
    dims = parse_dims(shape, bundle.io)
    with console.status(f"fixing shapes {dims} and checking against the dynamic variants ..."):
        results = add_fixed(bundle, dims, variants)
    for name, result in results.items():
        console.print(f"{name}: wrote {result['file']} (vs the dynamic variant: {result['check']})")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Folder for report.md and pareto.png "
              "(default: the bundle folder; they are derived from the manifest and not hash-listed).")
@click.option("--backend", default="ort-cpu", show_default=True, help="Whose bench results to plot.")
@click.option("--threads", default=None, help="Thread setting of the bench results to use (default: "
              "'default' if every variant has it, else the smallest count they all have).")
@click.option("--no-bench", is_flag=True, help="Fail instead of benchmarking variants that have no stored results.")
def report(bundle: Path, out_dir: Path | None, backend: str, threads: str | None, no_bench: bool) -> None:
    """Write report.md and pareto.png: each variant's accuracy vs latency, sized by file size.

    Accuracy is the gate metric measured at build time (held-out bits per token for decoders, mean
    embedding cosine for encoders); latency comes from `edgetx bench` results in the manifest
    (variants without them are benchmarked first unless --no-bench). The Pareto front is marked.

    \b
    Examples:
      edgetx report dist/smollm2
      edgetx bench dist/minilm --threads 1 && edgetx report dist/minilm --threads 1 --out reports/minilm
    """
    from edgetx.bundle import Bundle
    from edgetx.report import write_report

    loaded = Bundle.load(bundle)
    with console.status("collecting results (benchmarking variants without stored results) ..."):
        text, image, points = write_report(loaded, out_dir, backend, threads, run_missing_bench=not no_bench)
    print_report(points)
    console.print(f"wrote {text} and {image}")


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
