"""`edgetx convert`: other serializations of a bundle's variants (ORT format, fixed shapes), each checked."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgetx import progress
from edgetx.cli.app import main
from edgetx.cli.render import console, print_matrix, print_mobile
from edgetx.errors import EdgetxError


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["ort", "fixed", "genai"]), required=True,
              help="ort: onnxruntime's mobile format (.ort per variant + required_operators.config); "
                   "fixed: fixed-shape copies (model.fixed.onnx) for backends without dynamic shapes; "
                   "genai: genai_config.json + tokenizer beside each decoder variant, for onnxruntime-genai apps.")
@click.option("--shape", "shape", default=None, help="With --to fixed: every symbolic dim, e.g. "
              "batch=1,seq=128 (encoders) or batch=1,seq=1,past=127 (a decoder step).")
@click.option("--variant", "variants", multiple=True, help="Variant(s) to convert (default: all).")
@click.option("--no-verify", is_flag=True, help="--to ort / genai: skip checking the new files against the golden I/O "
              "(--to genai still compares genai's greedy tokens with edgetx's before writing).")
def convert(bundle: Path, target: str, shape: str | None, variants: tuple[str, ...], no_verify: bool) -> None:
    """Add other serializations of BUNDLE's variants, each checked before it is recorded.

    --to ort writes a .ort file beside each variant's model.onnx, the operator list for an
    onnxruntime reduced build (mobile/required_operators.config), and an NNAPI/CoreML usability
    report per variant (shown by `edgetx inspect`); then runs each .ort on the ort-format backend.

    --to genai writes genai_config.json and the tokenizer beside each decoder variant's model, so the
    variant's folder loads in onnxruntime-genai (C, C++, C#, Java, Python, Android) as it is; genai's own
    greedy loop must first pick the same tokens as edgetx's Generator (needs `edgetx provision genai`).

    --to fixed writes model.fixed.onnx with every symbolic dim set (--shape), checks it against the
    dynamic variant on the same inputs, and records the dims in the manifest.

    \b
    Examples:
      edgetx convert dist/edgetx-gpt --to ort
      edgetx verify dist/edgetx-gpt --backend ort-format
      edgetx convert dist/minilm --to fixed --shape batch=1,seq=128
      edgetx convert dist/edgetx-gpt --to fixed --shape batch=1,seq=1,past=127 --variant fp32
      edgetx convert dist/smollm2 --to genai
      edgetx bench dist/smollm2 --backend genai --variant int4-grid-a8
    """
    from edgetx.bundle import Bundle

    loaded = Bundle.load(bundle)
    chosen = list(variants) or None
    if target == "fixed":
        _convert_fixed(loaded, shape, chosen)
        return
    if shape:
        raise EdgetxError("--shape goes with --to fixed")
    if target == "genai":
        _convert_genai(loaded, chosen, no_verify)
        return
    from edgetx.build.convert import mobile_report, to_ort
    from edgetx.verify.parity import verify as run_verify

    with progress.stage("converting to the ORT format"):
        added = to_ort(loaded, chosen)
    with progress.stage("checking NNAPI / CoreML usability"):
        mobile_report(loaded, chosen)
    print_mobile(loaded.manifest)
    console.print(f"wrote {', '.join(added['ort'].values())} and {added['required_operators']}")
    if no_verify:
        return
    with progress.stage("verifying the .ort files on ort-format"):
        reports = [r.to_dict() for r in run_verify(Bundle.load(bundle), backend="ort-format", variants=chosen)]
    print_matrix(reports)
    if not all(r["passed"] for r in reports):
        console.print("[bold red]parity failed on the .ort files[/] (`edgetx verify BUNDLE --backend ort-format` "
                      "shows each check)")
        sys.exit(1)


def _convert_fixed(bundle, shape: str | None, variants: list[str] | None) -> None:
    from edgetx.build.convert import add_fixed, parse_dims, symbols

    if not shape:
        raise EdgetxError(f"--to fixed needs --shape with this model's dims ({', '.join(symbols(bundle.io))}), "
                          "e.g. --shape " + ",".join(f"{s}=1" for s in symbols(bundle.io)))
    dims = parse_dims(shape, bundle.io)
    with progress.stage(f"fixing shapes {dims} and checking against the dynamic variants"):
        results = add_fixed(bundle, dims, variants)
    for name, result in results.items():
        console.print(f"{name}: wrote {result['file']} (vs the dynamic variant: {result['check']})")



def _convert_genai(bundle, variants: list[str] | None, no_verify: bool) -> None:
    from edgetx.build.genai import to_genai
    from edgetx.bundle import Bundle
    from edgetx.verify.parity import verify as run_verify

    results = to_genai(bundle, variants)
    for name, result in results.items():
        agreed, steps = result["greedy_tokens"]
        console.print(f"{name}: wrote {result['config']}; model: {result['graph']}; past_present_share_buffer "
                      f"{str(result['past_present_share_buffer']).lower()}; tokenizer: {result['tokenizer']}; genai's "
                      f"greedy loop = edgetx's Generator for {agreed}/{steps} tokens ({result['checked_with']})")
        if result.get("tokenizer_note"):
            console.print(f"[yellow]{name}: {result['tokenizer_note']}[/]")
    if no_verify:
        return
    with progress.stage("verifying the genai folders against the golden I/O"):
        reports = [r.to_dict() for r in run_verify(Bundle.load(bundle.path), backend="genai", variants=list(results))]
    print_matrix(reports)
    if not all(r["passed"] for r in reports):
        console.print("[bold red]parity failed in genai[/] (`edgetx verify BUNDLE --backend genai` shows each check)")
        sys.exit(1)
