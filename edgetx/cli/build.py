"""`edgetx build`: a trained model in, a verified bundle out."""

from __future__ import annotations

from pathlib import Path

import click

from edgetx.cli.app import main
from edgetx.kinds import known_kinds
from edgetx.cli.render import console, print_candidates, print_mobile, print_parity, print_quantization

DEFAULT_OUT = "dist/edgetx-gpt"


@main.command()
@click.argument("model", required=False)
@click.option("--out", "-o", default=DEFAULT_OUT, show_default=True, type=click.Path(path_type=Path),
              help="Bundle folder to write.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept pickle weight files (pytorch_model.bin); loaded with weights_only=True. A factory with an "
                   "allow_pickle parameter is passed this flag.")
@click.option("--kind", default=None, help="For package.module:factory, the model kind when the factory does not say "
              "(" + ", ".join(known_kinds()) + ").")
@click.option("--trust-remote-code", is_flag=True, help="Let transformers run the model folder's own Python code.")
@click.option("--no-optimize", is_flag=True, help="Keep the exported graph as is (no fused candidates).")
@click.option("--quantize", "schemes", default="auto", show_default=True,
              help="Quantized variants to add, each behind its accuracy gate, comma-separated (see `edgetx quantize "
                   "--help`); auto = the model kind's defaults (" + "; ".join(
                       f"{k.name}: {','.join(k.default_schemes) or 'none'}" for k in known_kinds().values())
                   + "); none = fp32 only.")
@click.option("--ort", "to_ort", is_flag=True, help="Also add each variant in the ORT mobile format, verified "
              "(the same as `edgetx convert OUT --to ort` afterwards).")
def build(model: str | None, out: Path, force: bool, allow_pickle: bool, kind: str | None, trust_remote_code: bool,
          no_optimize: bool, schemes: str, to_ort: bool) -> None:
    """Export MODEL to a verified bundle (default MODEL: the reference checkpoint).

    MODEL is an edgetx checkpoint folder, a Hugging Face model folder (config.json +
    safetensors; causal-LM decoders; encoders such as BERT, RoBERTa, DistilBERT,
    DeBERTa-v2, ModernBERT, with or without a sequence/token classification head), a .gguf file,
    or package.module:factory: your own nn.Module, from a function (imported by name, the current
    folder first on the path) that returns the module, or (module, settings) with settings a dict
    of edgetx.build's keywords (kind, inputs, tokenizer, spec, pooling, held_out, eos_token_ids, name).

    \b
    Examples:
      edgetx build                                  # the bundled reference GPT
      edgetx build path/to/checkpoint --out dist/my-model --force
      edgetx build ~/models/all-MiniLM-L6-v2 --out dist/minilm
      edgetx build SmolLM2-135M-Instruct.Q4_1.gguf --out dist/smollm2
      edgetx build mymodels.gpt:make --kind causal-lm --out dist/mine   # your nn.Module
      edgetx build --ort                            # plus .ort files and required_operators.config
    """
    from edgetx.build import build as build_bundle

    from edgetx.quant.schemes import scheme

    chosen = None if schemes == "auto" else () if schemes.strip() in ("", "none") else \
        tuple(s.strip() for s in schemes.split(","))
    for name in chosen or ():
        scheme(name)  # an unknown name fails here, before an export of minutes
    source = None if model is None else _model_arg(model)
    if kind is not None and not isinstance(source, str):
        raise click.UsageError("--kind applies to MODEL given as package.module:factory")
    bundle = build_bundle(source, out, kind=kind,
                          force=force, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                          optimize=not no_optimize, quantize=chosen, formats=("ort",) if to_ort else ())
    if "optimization" in bundle.manifest:
        print_candidates(bundle.manifest.optimization)
    print_quantization(bundle.manifest)
    print_mobile(bundle.manifest)
    print_parity([v.parity for v in bundle.variants.values() if v.parity])
    console.print(f"bundle written to [bold]{bundle.path}[/]")


def _model_arg(model: str) -> str | Path:
    """A folder or file as a Path; package.module:factory stays a string."""
    return model if ":" in model and not Path(model).exists() else Path(model)


