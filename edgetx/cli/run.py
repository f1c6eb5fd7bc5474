"""Running a bundle: `edgetx generate` and `edgetx chat` (decoders), and `edgetx embed` (encoders)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import click

from edgetx.cli.app import main
from edgetx.cli.render import console, write_npy
from edgetx.errors import EdgetxError
from edgetx.runtimes.backend import REFERENCE_BACKEND


def _sampling(command):
    """The options generate and chat share: how many tokens, how to pick them, where to run."""
    for option in reversed([
        click.option("--max-tokens", "-n", default=128, show_default=True, help="New tokens to generate at most."),
        click.option("--temperature", "-t", default=0.0, show_default=True, help="0 = greedy."),
        click.option("--top-k", type=int, default=None, help="Sample from the k most likely tokens."),
        click.option("--top-p", type=float, default=None, help="Nucleus sampling threshold."),
        click.option("--seed", type=int, default=None, help="Random seed for sampling."),
        click.option("--stop", multiple=True, help="Stop when this text appears (repeatable; not printed)."),
        click.option("--prompt-lookup", type=int, default=0, show_default=True, metavar="N",
                     help="Greedy only: draft up to N tokens from the context and check them in one run (the same "
                          "text, faster where the output copies its input: code edits, quotes)."),
        click.option("--draft-variant", default=None, metavar="NAME",
                     help="Greedy only: a smaller variant of the same bundle (e.g. int4-grid-a8) drafts tokens that "
                          "--variant checks in one run: --variant's text, in fewer of its runs."),
        click.option("--draft-tokens", type=int, default=4, show_default=True, metavar="N",
                     help="With --draft-variant: tokens drafted per run at most."),
        click.option("--variant", default="fp32", show_default=True),
        click.option("--backend", default=REFERENCE_BACKEND, show_default=True),
        click.option("--threads", type=int, default=None),
    ]):
        command = option(command)
    return command


def _generator_and_config(bundle: Path, variant: str, backend: str, threads: int | None, max_tokens: int,
                          temperature: float, top_k: int | None, top_p: float | None, seed: int | None,
                          stop: tuple[str, ...], prompt_lookup: int = 0, draft_variant: str | None = None,
                          draft_tokens: int = 4):
    from edgetx.runtimes import GenerationConfig, Generator, Session

    config = GenerationConfig(max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=seed, stop=tuple(s.encode() for s in stop), prompt_lookup=prompt_lookup,
                              draft_tokens=draft_tokens if draft_variant else 0)
    config.check()  # a bad option fails before anything runs
    session = Session(bundle, variant=variant, backend=backend, threads=threads)
    draft = Session(session.bundle, variant=draft_variant, backend=backend, threads=threads) if draft_variant else None
    generator = Generator(session, draft=draft)
    return generator, config


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt", "-p", help="Text to continue.")
@click.option("--prompts-file", type=click.File("r", encoding="utf-8"),
              help="Continue each line of this file ('-' = stdin), as one batch; prints JSON.")
@click.option("--chat", is_flag=True, help="Wrap the prompt as a user message with the bundle's chat template.")
@_sampling
def generate(bundle: Path, prompt: str | None, prompts_file, chat: bool, max_tokens: int, temperature: float,
             top_k: int | None, top_p: float | None, seed: int | None, stop: tuple[str, ...], prompt_lookup: int,
             draft_variant: str | None, draft_tokens: int, variant: str, backend: str, threads: int | None) -> None:
    """Generate text from BUNDLE, streaming it to stdout (or, with --prompts-file, a batch of prompts at once:
    each row the text it gets alone, finished rows leaving the batch).

    \b
    Examples:
      edgetx generate dist/edgetx-gpt --prompt "import os" -n 200
      edgetx generate dist/edgetx-gpt -p "def " -t 0.8 --top-p 0.95 --seed 1 --stop $'\\n\\n'
      edgetx generate dist/smollm2 --chat -p "What is the capital of France?"
      edgetx generate dist/smollm2 --prompts-file questions.txt --chat -n 64 > answers.json
      edgetx generate dist/smollm2 --chat -p "Rename x to count: $(cat f.py)" --prompt-lookup 10
      edgetx generate dist/smollm2 --chat -p "Why is the sky blue?" --draft-variant int4-grid-a8
    """
    from edgetx.runtimes.tokenizer import apply_chat_template

    if (prompt is None) == (prompts_file is None):
        raise EdgetxError("give the text to continue with --prompt, or a file of prompts with --prompts-file (one "
                          "of them)")
    generator, config = _generator_and_config(bundle, variant, backend, threads, max_tokens, temperature, top_k,
                                              top_p, seed, stop, prompt_lookup, draft_variant, draft_tokens)
    session = generator.session
    wrap = (lambda p: apply_chat_template(session.bundle.manifest.tokenizer, [{"role": "user", "content": p}])) \
        if chat else (lambda p: p)
    if prompts_file is not None:
        prompts = [line.rstrip("\n") for line in prompts_file if line.strip()]
        if not prompts:
            raise EdgetxError("the prompts file has no prompts (one per line)")
        texts = generator.generate_batch([wrap(p) for p in prompts], config)
        click.echo(json.dumps([{"prompt": p, "text": t, "finish_reason": r}
                               for p, t, r in zip(prompts, texts, generator.finish_reasons)], ensure_ascii=False))
        console.print(f"[dim]{variant} on {backend}: {len(prompts)} prompts, {generator.stats.new_tokens} new tokens[/]")
        return
    text = wrap(prompt)
    out = sys.stdout
    pieces = generator.stream(text, config)
    first = next(pieces, "")  # a prompt the bundle cannot take fails here, before anything is printed
    if not chat:
        out.write(prompt)
    for piece in itertools.chain([first], pieces):
        out.write(piece)
        out.flush()
    out.write("\n")
    console.print(f"[dim]{variant} on {backend}: {generator.stats.summary()}; "
                  f"stopped by {generator.finish_reason}[/]")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--system", default=None, help="A system message to start the conversation with.")
@_sampling
def chat(bundle: Path, system: str | None, max_tokens: int, temperature: float, top_k: int | None,
         top_p: float | None, seed: int | None, stop: tuple[str, ...], prompt_lookup: int, draft_variant: str | None,
         draft_tokens: int, variant: str, backend: str, threads: int | None) -> None:
    """Chat with BUNDLE: one message per line on stdin, each reply on stdout. The KV cache is kept from turn to
    turn, so a turn costs its new tokens only (the reply equals a fresh run over the whole history).

    \b
    Examples:
      edgetx chat dist/smollm2 --system "You are terse."
      printf 'Hi\\nWhat is a list?\\n' | edgetx chat dist/smollm2 -n 64
    """
    from edgetx.runtimes import ChatSession

    generator, config = _generator_and_config(bundle, variant, backend, threads, max_tokens, temperature, top_k,
                                              top_p, seed, stop, prompt_lookup, draft_variant, draft_tokens)
    session = ChatSession(generator, system=system)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        click.echo(session.send(line.rstrip("\n"), config))
        console.print(f"[dim]{generator.stats.summary()}; {session.reused_tokens} tokens from the cache; stopped by "
                      f"{session.finish_reason}[/]")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.File("r"), help="Read texts from this file, one per line ('-' = stdin).")
@click.option("--npy", type=click.Path(path_type=Path), help="Write the vectors to this .npy file instead of JSON.")
@click.option("--variant", default="fp32", show_default=True)
@click.option("--backend", default=REFERENCE_BACKEND, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
def embed(bundle: Path, texts: tuple[str, ...], text_file, npy: Path | None, variant: str, backend: str,
          batch_size: int) -> None:
    """Sentence embeddings from an encoder BUNDLE, or text embeddings from an image-text one (CLIP, SigLIP: in
    the space of its image embeddings): JSON on stdout, or a .npy file.

    \b
    Examples:
      edgetx embed dist/minilm "A cat sits on the mat." "A dog plays in the park."
      edgetx embed dist/minilm --file sentences.txt --npy vectors.npy
      edgetx embed dist/clip "a photo of a cat" "a photo of a dog"
    """
    from edgetx.runtimes import Session

    items = list(texts) + ([line.rstrip("\n") for line in text_file if line.strip()] if text_file else [])
    if not items:
        raise EdgetxError("no texts given: pass them as arguments or with --file")
    session = Session(bundle, variant=variant, backend=backend)
    text_tower = "embed_text" in session.kind.helpers  # a dual encoder's texts go through its text graph
    vectors = (session.embed_text if text_tower else session.embed)(items, batch_size=batch_size)
    if npy:
        write_npy(npy, vectors)
    else:
        click.echo(json.dumps([{"text": t, "embedding": [round(float(x), 7) for x in v]}
                               for t, v in zip(items, vectors)]))

