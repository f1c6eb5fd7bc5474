"""Measuring a bundle: `edgetx bench` (speed, memory) and `edgetx report` (accuracy x latency x size)."""

from __future__ import annotations

from pathlib import Path

import click

from edgetx.bundle import to_json
from edgetx import progress
from edgetx.cli.app import main
from edgetx.cli.render import console, print_bench, print_report
from edgetx.errors import EdgetxError
from edgetx.kinds import kind_of
from edgetx.runtimes.backend import REFERENCE_BACKEND


def _ints(text: str, allow_default: bool = False) -> tuple:
    try:
        return tuple(None if allow_default and t.strip() == "default" else int(t) for t in text.split(","))
    except ValueError:
        raise EdgetxError(f"expected comma-separated integers, got {text!r}") from None


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-p", "--prompt-tokens", default=128, show_default=True, help="Decoders: prompt length.")
@click.option("-n", "--new-tokens", default=64, show_default=True, help="Decoders: tokens to generate.")
@click.option("--batch-sizes", default=None, help="Encoders and vision models: batch sizes [default: 1,8]. "
              "Decoders: also decode this many rows at once (aggregate tok/s against batch 1), e.g. 1,8.")
@click.option("--seq-lens", default="128", show_default=True, help="Encoders: sequence lengths.")
@click.option("--threads", "threads_text", default="default", show_default=True,
              help="Thread counts to sweep, e.g. 1,2 ('default' = the backend's).")
@click.option("--variant", "variants", multiple=True, help="Variant(s) (default: all).")
@click.option("--backend", default=REFERENCE_BACKEND, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--warmup", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("--no-save", is_flag=True, help="Do not store the results in the bundle's manifest.")
def bench(bundle: Path, prompt_tokens: int, new_tokens: int, batch_sizes: str | None, seq_lens: str, threads_text: str,
          variants: tuple[str, ...], backend: str, repeats: int, warmup: int, as_json: bool, no_save: bool) -> None:
    """Measure BUNDLE's variants on a backend (torch-free; runs on a device).

    \b
    Examples:
      edgetx bench dist/smollm2 -p 128 -n 64 --threads 1,2
      edgetx bench dist/minilm --batch-sizes 1,8,32 --seq-lens 64,128 --json > bench.json
      edgetx bench dist/smollm2 -n 64 --batch-sizes 1,8 --threads 2   # batched decode throughput
    """
    from edgetx.measure.bench import BenchConfig
    from edgetx.measure.bench import bench as run_bench
    from edgetx.bundle import Bundle

    loaded = Bundle.load(bundle)
    if repeats < 1 or warmup < 0:
        raise EdgetxError("--repeats must be >= 1 and --warmup >= 0")
    sizes = _ints(batch_sizes) if batch_sizes is not None else (1, 8)
    cfg = BenchConfig(prompt_tokens, new_tokens, sizes, _ints(seq_lens), warmup, repeats,
                      decode_batch_sizes=tuple(b for b in sizes if b > 1) if batch_sizes is not None else ())
    with progress.stage("benchmarking"):
        results = run_bench(loaded, list(variants) or None, backend, _ints(threads_text, allow_default=True), cfg)
    if as_json:
        click.echo(to_json(results))
    else:
        print_bench(results, kind_of(loaded))
    if not no_save:
        loaded.update_manifest("bench", loaded.manifest.with_bench(results))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Folder for report.md and pareto.png "
              "(default: the bundle folder; they are derived from the manifest and not hash-listed).")
@click.option("--backend", default=REFERENCE_BACKEND, show_default=True, help="Whose bench results to plot.")
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
    from edgetx.measure.report import write_report

    loaded = Bundle.load(bundle)
    with progress.stage("collecting results (benchmarking variants without stored results)"):
        text, image, points = write_report(loaded, out_dir, backend, threads, run_missing_bench=not no_bench)
    print_report(points)
    console.print(f"wrote {text} and {image}")

