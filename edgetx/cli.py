"""The `edgetx` command line: thin wrappers over build, verify, generate and embed; the file
and bundle tools (inspect, optimize, quantize, bench, backends) are in edgetx.cli_tools."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np
from rich.markup import escape
from rich.table import Table

from edgetx import __version__
from edgetx.bundle import to_json
from edgetx.errors import EdgetxError
from edgetx.tables import console, print_candidates, print_matrix, print_mobile, print_parity, print_quantization

DEFAULT_OUT = "dist/edgetx-gpt"


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


@contextmanager
def _stage(title: str) -> Iterator[None]:
    started = time.perf_counter()
    with console.status(f"{title} ..."):
        yield
    console.print(f"[green]✓[/] {title} [dim]({time.perf_counter() - started:.1f}s)[/]")


@main.command()
@click.argument("model", required=False, type=click.Path(path_type=Path))
@click.option("--out", "-o", default=DEFAULT_OUT, show_default=True, type=click.Path(path_type=Path),
              help="Bundle folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept pickle weight files (pytorch_model.bin); loaded with weights_only=True.")
@click.option("--trust-remote-code", is_flag=True, help="Let transformers run the model folder's own Python code.")
@click.option("--no-optimize", is_flag=True, help="Keep the exported graph as is (no fused candidates).")
@click.option("--quantize", "schemes", default="auto", show_default=True,
              help="Quantized variants to add, each behind its accuracy gate, comma-separated (see `edgetx quantize "
                   "--help`); auto = int8-weight-only,int4 for decoders and int8,int4 for encoders; none = fp32 only.")
@click.option("--ort", "to_ort", is_flag=True, help="Also add each variant in the ORT mobile format, verified "
              "(the same as `edgetx convert OUT --to ort` afterwards).")
def build(model: Path | None, out: Path, force: bool, allow_pickle: bool, trust_remote_code: bool,
          no_optimize: bool, schemes: str, to_ort: bool) -> None:
    """Export MODEL to a verified bundle (default MODEL: the reference checkpoint).

    MODEL is an edgetx checkpoint folder, a Hugging Face model folder (config.json +
    safetensors; Llama/Qwen2/Mistral/GPT-2-style decoders, BERT-family encoders) or a .gguf file.

    \b
    Examples:
      edgetx build                                  # the bundled reference GPT
      edgetx build path/to/checkpoint --out dist/my-model --force
      edgetx build ~/models/all-MiniLM-L6-v2 --out dist/minilm
      edgetx build SmolLM2-135M-Instruct.Q4_1.gguf --out dist/smollm2
      edgetx build --ort                            # plus .ort files and required_operators.config
    """
    from edgetx.build import build as build_bundle

    from edgetx.quantize import scheme

    chosen = None if schemes == "auto" else () if schemes.strip() in ("", "none") else \
        tuple(s.strip() for s in schemes.split(","))
    for name in chosen or ():
        scheme(name)  # an unknown name fails here, before an export of minutes
    bundle = build_bundle(model, out, force=force, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                          optimize=not no_optimize, quantize=chosen, formats=("ort",) if to_ort else (),
                          stage=_stage)
    if "optimization" in bundle.manifest:
        print_candidates(bundle.manifest["optimization"])
    print_quantization(bundle.manifest)
    print_mobile(bundle.manifest)
    print_parity([v.parity for v in bundle.variants.values() if v.parity])
    console.print(f"bundle written to [bold]{bundle.path}[/]")



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
    from edgetx.parity import to_markdown, verify_matrix

    chosen = None if all_backends else list(backends) or ["ort-cpu"]
    with console.status("verifying ..."):
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
    from edgetx.explain import explain_bundle, render

    variant = variants[0] if variants else "fp32"
    backend = backends[0] if backends else "ort-cpu"
    kwargs = {"rel_tol": rel_tol} if rel_tol is not None else {}
    with console.status(f"comparing {variant} block by block ..."):
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


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", required=True, help="Text to continue.")
@click.option("--max-tokens", "-n", default=128, show_default=True, help="New tokens to generate at most.")
@click.option("--temperature", "-t", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=None, help="Sample from the k most likely tokens.")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling threshold.")
@click.option("--seed", type=int, default=None, help="Random seed for sampling.")
@click.option("--stop", multiple=True, help="Stop when this text appears (repeatable; not printed).")
@click.option("--chat", is_flag=True, help="Wrap the prompt as a user message with the bundle's chat template.")
@click.option("--variant", default="fp32", show_default=True)
@click.option("--backend", default="ort-cpu", show_default=True)
@click.option("--threads", type=int, default=None)
def generate(bundle: Path, prompt: str, max_tokens: int, temperature: float, top_k: int | None,
             top_p: float | None, seed: int | None, stop: tuple[str, ...], chat: bool, variant: str, backend: str,
             threads: int | None) -> None:
    """Generate text from BUNDLE, streaming it to stdout.

    \b
    Examples:
      edgetx generate dist/edgetx-gpt --prompt "import os" -n 200
      edgetx generate dist/edgetx-gpt -p "def " -t 0.8 --top-p 0.95 --seed 1 --stop $'\\n\\n'
      edgetx generate dist/smollm2 --chat -p "What is the capital of France?"
    """
    from edgetx.runtimes import GenerationConfig, Generator, Session
    from edgetx.runtimes.tokenizer import apply_chat_template

    session = Session(bundle, variant=variant, backend=backend, threads=threads)
    generator = Generator(session)
    config = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=seed, stop=tuple(s.encode() for s in stop))
    text = apply_chat_template(session.bundle.manifest["tokenizer"], [{"role": "user", "content": prompt}]) \
        if chat else prompt
    out = sys.stdout
    if not chat:
        out.write(prompt)
    for piece in generator.stream(text, config):
        out.write(piece)
        out.flush()
    out.write("\n")
    console.print(f"[dim]{variant} on {backend}: {generator.stats.summary()}; "
                  f"stopped by {generator.finish_reason}[/]")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.File("r"), help="Read texts from this file, one per line ('-' = stdin).")
@click.option("--npy", type=click.Path(path_type=Path), help="Write the vectors to this .npy file instead of JSON.")
@click.option("--variant", default="fp32", show_default=True)
@click.option("--backend", default="ort-cpu", show_default=True)
@click.option("--batch-size", default=32, show_default=True)
def embed(bundle: Path, texts: tuple[str, ...], text_file, npy: Path | None, variant: str, backend: str,
          batch_size: int) -> None:
    """Sentence embeddings from an encoder BUNDLE: JSON on stdout, or a .npy file.

    \b
    Examples:
      edgetx embed dist/minilm "A cat sits on the mat." "A dog plays in the park."
      edgetx embed dist/minilm --file sentences.txt --npy vectors.npy
    """
    from edgetx.runtimes import Session

    items = list(texts) + ([line.rstrip("\n") for line in text_file if line.strip()] if text_file else [])
    if not items:
        raise EdgetxError("no texts given: pass them as arguments or with --file")
    session = Session(bundle, variant=variant, backend=backend)
    vectors = session.embed(items, batch_size=batch_size)
    if npy:
        tmp = npy.with_name(npy.name + ".partial")
        with open(tmp, "wb") as f:
            np.save(f, vectors)
        tmp.replace(npy)
        console.print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} float32 to {npy}")
    else:
        click.echo(json.dumps([{"text": t, "embedding": [round(float(x), 7) for x in v]}
                               for t, v in zip(items, vectors)]))


from edgetx import cli_preflight, cli_tools  # noqa: E402,F401  (register the file/bundle tools and preflight)

if __name__ == "__main__":  # `python -m edgetx.cli`: run the group the tools registered on
    from edgetx.cli import main as registered_main

    registered_main()
