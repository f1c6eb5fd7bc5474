"""Running a vision bundle: `edgetx classify-image` (image classification), `edgetx embed-image` (image encoders)
and `edgetx zero-shot` (image-text dual encoders: CLIP, SigLIP). Images are files in any format Pillow reads,
pre-processed torch-free as the bundle's config says."""

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


def _print_labels(paths: list[Path], results: list[dict], as_json: bool, top: int) -> None:
    """Each image's labels: JSON (every label's score) or a table of its `top` labels, on stdout."""
    if as_json:
        click.echo(json.dumps([{"image": str(path), **r} for path, r in zip(paths, results)]))
        return
    table = Table("image", "label", "score")
    for path, r in zip(paths, results):
        for rank, (label, score) in enumerate(sorted(r["scores"].items(), key=lambda kv: -kv[1])[: max(top, 1)]):
            table.add_row(escape(str(path)) if rank == 0 else "", escape(label), f"{score:.3f}")
    Console().print(table)


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
    _print_labels(paths, results, as_json, top)


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


@main.command("zero-shot")
@_options
@click.option("--label", "labels", multiple=True, metavar="TEXT", help="A candidate label (repeat: --label cat "
              "--label dog).")
@click.option("--labels-file", type=click.File("r", encoding="utf-8"), help="Candidate labels, one per line.")
@click.option("--template", default=None, help="How a label becomes a text: '{}' stands for the label "
              "[default: the bundle's, 'This is a photo of {}.'].")
@click.option("--top", default=3, show_default=True, help="Labels to show per image in the table (JSON has all).")
def zero_shot(bundle: Path, images: tuple[Path, ...], as_json: bool, variant: str, backend: str, batch_size: int,
              labels: tuple[str, ...], labels_file, template: str | None, top: int) -> None:
    """Label each IMAGE with any labels you name, by an image-text BUNDLE (CLIP, SigLIP): each label written into
    a sentence, its text embedding compared with the image's, as the model scores them (a softmax over the labels;
    a sigmoid per label for SigLIP, so scores need not sum to 1).

    \b
    Examples:
      edgetx zero-shot dist/clip cat.jpg --label cat --label dog --label "a bowl of fruit"
      edgetx zero-shot dist/siglip photos/*.jpg --labels-file labels.txt --json > scores.json
      edgetx zero-shot dist/clip cat.jpg --label cat --label dog --template "a drawing of a {}"
    """
    from edgetx.runtimes import Session

    paths = _images(images)
    names = list(labels) + ([line.strip() for line in labels_file if line.strip()] if labels_file else [])
    if not names:
        raise EdgetxError("no labels given: name them with --label (repeat it) or --labels-file")
    results = Session(bundle, variant=variant, backend=backend).zero_shot(paths, names, template, batch_size)
    _print_labels(paths, results, as_json, top)
