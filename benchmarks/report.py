"""Accuracy (computed centrally, against PyTorch fp32) and the side-by-side tables of peers.py."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

SPEEDUP_NOTE = ("speed-up = peer ms / edgetx ms (>1: edgetx is faster); first against the fastest edgetx "
                "variant for that column, in brackets against edgetx fp32. CPU % = process CPU time / (wall x "
                "threads) while timing: well under 100 means the side shared the CPU with something else and "
                "its times are inflated")


def reference_row(rows: list[dict]) -> dict | None:
    """PyTorch fp32 if it ran, else edgetx fp32 (the table says which)."""
    for tool in ("pytorch", "edgetx"):
        for row in rows:
            if row["tool"] == tool and row["ok"] and "fp32" in row["variant"]:
                return row
    return None


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def add_accuracy(model: str, rows: list[dict], arrays: dict[str, dict[str, np.ndarray]], eval_ids: np.ndarray | None) -> str:
    """Fill each ok row's accuracy fields from its arrays; returns the reference's name."""
    ref = reference_row(rows)
    if ref is None:
        return "none (no fp32 side ran)"
    ref_arrays = arrays[ref["key"]]
    for row in rows:
        if not row["ok"]:
            continue
        mine = arrays[row["key"]]
        if model == "minilm":
            cos = (mine["embeddings"] * ref_arrays["embeddings"]).sum(axis=1)
            row.update(cos_mean=float(cos.mean()), cos_min=float(cos.min()), sentences=len(cos))
            continue
        logits, ref_logits = mine["logits"], ref_arrays["logits"]
        lp, ref_lp = log_softmax(logits), log_softmax(ref_logits)
        targets = eval_ids[1:]
        ref_greedy, greedy = list(ref_arrays["tokens"]), list(mine["tokens"])
        same = next((i for i, (a, b) in enumerate(zip(greedy, ref_greedy)) if a != b), min(len(greedy), len(ref_greedy)))
        row.update(top1=float((logits.argmax(-1) == ref_logits.argmax(-1)).mean()),
                   nll=float(-lp[np.arange(len(targets)), targets].mean()),
                   kl=float((np.exp(ref_lp) * (ref_lp - lp)).sum(-1).mean()),
                   greedy_same=int(same), greedy_total=len(ref_greedy), positions=int(len(eval_ids)))
    return f"{ref['tool']} {ref['variant']}"


def add_speedups(rows: list[dict], metrics: list[str]) -> None:
    """speedup_<metric> = (peer / fastest edgetx, peer / edgetx fp32) for every ok non-edgetx row."""
    mine = [r for r in rows if r["tool"] == "edgetx" and r["ok"]]
    fp32 = next((r for r in mine if r["variant"] == "fp32"), None)
    for metric in metrics:
        values = [r[metric] for r in mine if r.get(metric)]
        best = min(values) if values else None
        best_variant = next((r["variant"] for r in mine if r.get(metric) == best), None)
        for row in rows:
            if row["tool"] == "edgetx" or not row["ok"] or not row.get(metric) or best is None:
                continue
            row[f"speedup_{metric}"] = {"vs_best": row[metric] / best, "best_variant": best_variant,
                                        "vs_fp32": row[metric] / fp32[metric] if fp32 and fp32.get(metric) else None}


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _speedup(row: dict, metric: str) -> str:
    s = row.get(f"speedup_{metric}")
    if row["tool"] == "edgetx":
        return "(edgetx)"
    if not s:
        return "—"
    return f"{s['vs_best']:.2f}×" + (f" ({s['vs_fp32']:.2f}×)" if s["vs_fp32"] else "")


MINILM_COLUMNS = ["side", "variant", "size MB", "b1×128 ms", "b32×128 ms", "cos mean", "cos min",
                  "speed-up b1", "speed-up b32", "CPU %"]
SMOLLM2_COLUMNS = ["side", "variant", "size MB", "TTFT ms (128 tok)", "decode ms/tok", "top-1", "NLL", "KL",
                   "greedy = ref", "speed-up TTFT", "speed-up decode", "CPU %"]


def _cells(model: str, row: dict) -> list[str]:
    head = [row["tool"], row["variant"]]
    if not row["ok"]:
        return head + ["FAILED"] + ["—"] * ((len(MINILM_COLUMNS) if model == "minilm" else len(SMOLLM2_COLUMNS)) - 3)
    size = f"{row['size_mb']:.0f}" if row.get("size_mb") else "—"
    cpu = f"{row['cpu_percent']:.0f}" if row.get("cpu_percent") else "—"
    if model == "minilm":
        return head + [size, _ms(row.get("b1_s128")), _ms(row.get("b32_s128")),
                       f"{row['cos_mean']:.5f}" if "cos_mean" in row else "—",
                       f"{row['cos_min']:.5f}" if "cos_min" in row else "—",
                       _speedup(row, "b1_s128"), _speedup(row, "b32_s128"), cpu]
    greedy = f"{row['greedy_same']}/{row['greedy_total']}" if "greedy_same" in row else "—"
    return head + [size, _ms(row.get("ttft_ms")), _ms(row.get("decode_ms_per_token")),
                   f"{row['top1']:.3f}" if "top1" in row else "—", f"{row['nll']:.3f}" if "nll" in row else "—",
                   f"{row['kl']:.4f}" if "kl" in row else "—", greedy,
                   _speedup(row, "ttft_ms"), _speedup(row, "decode_ms_per_token"), cpu]


def print_table(console: Console, model: str, rows: list[dict], reference: str, settings: dict) -> None:
    if model == "minilm":
        title = (f"all-MiniLM-L6-v2 — {settings['threads']} thread(s), warm-up {settings['warmup']}, median of "
                 f"{settings['repeats']}; cosine of sentence embeddings vs {reference} over "
                 f"{next((r['sentences'] for r in rows if 'sentences' in r), '?')} sentences (seq 128, padded)")
        columns = MINILM_COLUMNS
    else:
        title = (f"SmolLM2-135M-Instruct — {settings['threads']} thread(s), prompt {settings['prompt_tokens']} "
                 f"tokens, {settings['new_tokens']} greedy new tokens, warm-up {settings['warmup']}, median of "
                 f"{settings['repeats']}; teacher-forced top-1 / KL vs {reference} and NLL (nats/token) over "
                 f"{settings['eval_tokens']} tokens; greedy = leading generated tokens equal to the reference's")
        columns = SMOLLM2_COLUMNS
    table = Table(title=title, title_justify="left", caption=SPEEDUP_NOTE, caption_justify="left")
    for i, name in enumerate(columns):
        table.add_column(name, justify="left" if i < 2 else "right", no_wrap=True, min_width=len(name) if i >= 2 else 7)
    last_tool = None
    for row in rows:
        if last_tool and row["tool"] != last_tool:
            table.add_section()
        last_tool = row["tool"]
        table.add_row(*_cells(model, row))
    console.print(table)
    failures: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if not row["ok"]:  # a peer that failed as a whole is one line, not one per variant
            failures.setdefault((row["tool"], row["error"]), []).append(row["variant"])
    for (tool, error), variants in failures.items():
        short = error if len(error) <= 240 else error[:237] + "..."
        console.print(f"  [red]FAILED[/red] {tool} {', '.join(variants)}: {short}", highlight=False)
    for row in rows:
        if row.get("note"):
            console.print(f"  note: {row['tool']} {row['variant']}: {row['note']}")
        if row.get("teacher_method"):
            console.print(f"  note: {row['tool']} {row['variant']} teacher forcing: {row['teacher_method']}")
