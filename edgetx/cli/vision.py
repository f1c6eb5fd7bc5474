"""Running a vision bundle: `edgetx classify-image` (image classification) and `edgetx embed-image` (image
encoders). Images are files in any format Pillow reads, pre-processed torch-free as the bundle's config says."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgetx.cli.app import main
from edgetx.cli.render import write_npy
from edgetx.errors import EdgetxError
from edgetx.runtimes.backend import REFERENCE_BACKEND


def _options(command):
    """The options both verbs share."""
    for option in reversed([
        click.argument("bundle", type=click.Path(path_type=Path)),
        click.argument("images", nargs=-1, type=click.Path(path_type=Path)),
        click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of a table."),
        click.option("--variant", default="fp32", show_default=True),
        click.option("--backend", default=REFERENCE_BACKEND, show_default=True),
        click.option("--batch-size", default=32, show_default=True, help="Images run together."),
    ]):
        command = option(command)
    return command


def _images(images: tuple[Path, ...]) -> list[Path]:
    if not images:
        raise EdgetxError("no images given: pass one or more image files (PNG, JPEG, ... anything Pillow reads)")
    return list(images)


@main.command("classify-image")
@_options
@click.option("--top", default=1, show_default=True, help="Labels to show per image in the table (JSON has all).")
def classify_image(bundle: Path, images: tuple[Path, ...], as_json: bool, variant: str, backend: str, batch_size: int,
                   top: int) -> None:
    """Label each IMAGE with an image-classification BUNDLE (…ForImageClassification).

    \b
    Examples:
      edgetx classify-image dist/vit cat.jpg dog.png
      edgetx classify-image dist/vit photos/*.jpg --json > labels.json
      edgetx classify-image dist/vit cat.jpg --top 3 --variant int8-static-minmax
    """
    from edgetx.runtimes import Session

    paths = _images(images)
    results = Session(bundle, variant=variant, backend=backend).classify_image(paths, batch_size)
    if as_json:
        click.echo(json.dumps([{"image": str(path), **r} for path, r in zip(paths, results)]))
        return
    table = Table("image", "label", "score")
    for path, r in zip(paths, results):
        for rank, (label, score) in enumerate(sorted(r["scores"].items(), key=lambda kv: -kv[1])[: max(top, 1)]):
            table.add_row(escape(str(path)) if rank == 0 else "", escape(label), f"{score:.3f}")
    Console().print(table)  # the answer goes to stdout


@main.command("embed-image")
@_options
@click.option("--npy", type=click.Path(path_type=Path), help="Write the vectors to this .npy file.")
def embed_image(bundle: Path, images: tuple[Path, ...], as_json: bool, variant: str, backend: str, batch_size: int,
                npy: Path | None) -> None:
    """Embed each IMAGE with an image-encoder BUNDLE (a vision model, or CLIP's / SigLIP's vision tower).

    The vectors are the model's own (model.embedding_from: image_embeds, pooler_output or the CLS token),
    not normalized. Without --json or --npy a table shows each vector's size, norm and first values.

    \b
    Examples:
      edgetx embed-image dist/clip-vision cat.jpg dog.png --json
      edgetx embed-image dist/dinov2 photos/*.jpg --npy vectors.npy
    """
    from edgetx.runtimes import Session

    paths = _images(images)
    vectors = Session(bundle, variant=variant, backend=backend).embed_image(paths, batch_size)
    if npy:
        write_npy(npy, vectors)
    if as_json:
        click.echo(json.dumps([{"image": str(p), "embedding": [round(float(x), 7) for x in v]}
                               for p, v in zip(paths, vectors)]))
    elif not npy:
        table = Table("image", "dim", "norm", "first values")
        for path, v in zip(paths, vectors):
            table.add_row(escape(str(path)), str(len(v)), f"{np.linalg.norm(v):.4f}",
                          " ".join(f"{x:+.4f}" for x in v[:4]) + " …")
        Console().print(table)
