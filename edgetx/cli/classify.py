"""Running an encoder head or an encoder-decoder: `edgetx classify` (sequence classification), `edgetx tag` (token
classification), `edgetx translate` (text to text) and `edgetx transcribe` (speech to text)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from edgetx.cli.app import main
from rich.console import Console

from edgetx.cli.render import console  # noqa: F401  (errors and progress go to stderr)
from edgetx.errors import EdgetxError
from edgetx.runtimes.backend import REFERENCE_BACKEND


def _texts(texts: tuple[str, ...], text_file) -> list[str]:
    """The texts given as arguments and in --file, one per line."""
    items = list(texts) + ([line.rstrip("\n") for line in text_file if line.strip()] if text_file else [])
    if not items:
        raise EdgetxError("no texts given: pass them as arguments or with --file")
    return items


def _options(command):
    """The options both verbs share."""
    for option in reversed([
        click.argument("bundle", type=click.Path(path_type=Path)),
        click.argument("texts", nargs=-1),
        click.option("--file", "text_file", type=click.File("r"), help="Read texts from this file, one per line ('-' = stdin)."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout instead of a table."),
        click.option("--variant", default="fp32", show_default=True),
        click.option("--backend", default=REFERENCE_BACKEND, show_default=True),
        click.option("--batch-size", default=32, show_default=True),
    ]):
        command = option(command)
    return command


@main.command()
@_options
def classify(bundle: Path, texts: tuple[str, ...], text_file, as_json: bool, variant: str, backend: str,
             batch_size: int) -> None:
    """Label each text with a sequence-classification BUNDLE (…ForSequenceClassification).

    \b
    Examples:
      edgetx classify dist/sst2 "A delightful film." "Two hours I will not get back."
      edgetx classify dist/sst2 --file reviews.txt --json
    """
    from edgetx.runtimes import Session

    results = Session(bundle, variant=variant, backend=backend).classify(_texts(texts, text_file), batch_size)
    if as_json:
        click.echo(json.dumps(results))
        return
    table = Table("text", "label", "score")
    for r in results:
        table.add_row(escape(r["text"]), escape(r["label"]), f"{r['score']:.3f}")
    Console().print(table)  # the answer goes to stdout


@main.command()
@_options
def tag(bundle: Path, texts: tuple[str, ...], text_file, as_json: bool, variant: str, backend: str,
        batch_size: int) -> None:
    """Label each word of each text with a token-classification BUNDLE (…ForTokenClassification, e.g. NER).

    A word takes the label of its first token; --json also lists every token's own label.

    \b
    Examples:
      edgetx tag dist/ner "Ada Lovelace worked in London."
      edgetx tag dist/ner --file sentences.txt --json
    """
    from edgetx.runtimes import Session

    items = _texts(texts, text_file)
    results = Session(bundle, variant=variant, backend=backend).tag(items, batch_size)
    if as_json:
        click.echo(json.dumps([{"text": t, "words": words} for t, words in zip(items, results)]))
        return
    table = Table("text", "word", "label", "score")
    for index, words in enumerate(results):
        for word in words:
            table.add_row(str(index), escape(word["word"]), escape(word["label"]), f"{word['score']:.3f}")
    Console().print(table)  # the answer goes to stdout


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.File("r"), help="Read texts from this file, one per line ('-' = stdin).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout ([{text, output}]) instead of lines.")
@click.option("-n", "--max-tokens", "max_tokens", default=64, show_default=True, help="Tokens to generate at most.")
@click.option("--variant", default="fp32", show_default=True)
@click.option("--backend", default=REFERENCE_BACKEND, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
def translate(bundle: Path, texts: tuple[str, ...], text_file, as_json: bool, max_tokens: int, variant: str,
              backend: str, batch_size: int) -> None:
    """Turn each text into the output of an encoder-decoder BUNDLE (T5, BART, Marian, ...): translation,
    summarisation, whatever the model was trained for. Greedy decoding, one output line per text.

    \b
    Examples:
      edgetx translate dist/opus-en-de "The house is small." "It rains today."
      edgetx translate dist/t5-small "summarize: $(cat article.txt)" -n 128
      edgetx translate dist/opus-en-de --file sentences.txt --json
    """
    from edgetx.runtimes import Session

    items = _texts(texts, text_file)
    outputs = Session(bundle, variant=variant, backend=backend).translate(items, max_tokens, batch_size)
    if as_json:
        click.echo(json.dumps([{"text": t, "output": o} for t, o in zip(items, outputs)]))
        return
    for output in outputs:
        click.echo(output)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--language", help="Spoken language code (e.g. en, de, fr; default: the model's own).")
@click.option("--task", type=click.Choice(["transcribe", "translate"]), help="Whisper's task (default: the model's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout: per file {file, text, language, task, "
              "seconds, segments: [{start, end, text}] per 30 s window}.")
@click.option("-n", "--max-tokens", "max_tokens", type=int, default=None, help="Tokens per 30 s window at most.")
@click.option("--variant", default="fp32", show_default=True)
@click.option("--backend", default=REFERENCE_BACKEND, show_default=True)
def transcribe(bundle: Path, audio: tuple[Path, ...], language: str | None, task: str | None, as_json: bool,
               max_tokens: int | None, variant: str, backend: str) -> None:
    """Write down what is said in each AUDIO file (WAV or FLAC, any sample rate) with a speech-recognition
    BUNDLE (Whisper). Long audio is read in 30 s windows.

    \b
    Examples:
      edgetx transcribe dist/whisper-base meeting.wav
      edgetx transcribe dist/whisper-base interview.flac --language de --json
      edgetx transcribe dist/whisper-base --variant int8 *.wav
    """
    from edgetx.runtimes import Session

    session = Session(bundle, variant=variant, backend=backend)
    results = [{"file": str(path), **session.transcribe(path, language=language, task=task, max_new_tokens=max_tokens)}
               for path in audio]
    if as_json:
        click.echo(json.dumps(results))
        return
    for result in results:
        click.echo(result["text"] if len(results) == 1 else f"{result['file']}: {result['text']}")
