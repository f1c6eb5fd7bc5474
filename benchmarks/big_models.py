"""Large decoders through `edgetx build`: peak memory and wall time per stage against the fp32 weight bytes.

Each shape is a random-init Qwen2 (the width, depth, heads and vocabulary of a real checkpoint) saved with
save_pretrained, built into a bundle (the optimization stage and a quantized variant), copied to another
folder and verified there. Each shape runs in its own process, so its peak RSS is its own; shapes run one
after another, never together, and a shape is skipped when MemAvailable is below its estimated need.

    python benchmarks/big_models.py [--shapes qwen2-0.5b,qwen2-1.5b] [--quantize int4] [--work DIR]

writes benchmarks/results/<date>-big-models.{md,json} (the machine and the command included).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

SHAPES: dict[str, dict] = {  # Qwen2-0.5B untied (its tied head alone stays under 2 GiB), Qwen2-1.5B as released
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False),
    "qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
# A decisive random model (tests/hf_models.save_big_decoder): the embedding at this scale, the lm_head a copy of it,
# so the quantization gate can pass on random weights and the build is timed without a mixed-precision search that
# only a random model needs (on plain random init int4's first trial missed and the search ran for an hour).
EMBEDDING_STD = 0.5
NEED_VS_WEIGHTS = 3.2  # the memory a shape is allowed to need, times its fp32 weight bytes (goal: <= 3x)


def weight_bytes(shape: dict) -> int:
    """fp32 parameter bytes of a Qwen2 of this shape (q/k/v biases included)."""
    h, i, n, v = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    layer = h * h + h + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    return 4 * (v * h * (1 if shape["tie_word_embeddings"] else 2) + n * layer + h)


def available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def run_one(name: str, work: Path, quantize: tuple[str, ...], candidates: tuple[str, ...] | None) -> dict:
    """In this process: make the model, build, move the bundle, verify it there. Returns the measurements."""
    sys.path.insert(0, str(ROOT / "tests"))
    from hf_models import save_big_decoder

    from edgetx.build.pipeline import build, peak_rss_bytes
    from edgetx.bundle import Bundle
    from edgetx.verify.parity import verify

    shape = SHAPES[name]
    started = time.perf_counter()
    save_big_decoder(work / "hf", embedding_std=EMBEDDING_STD, **shape)
    make_seconds = time.perf_counter() - started
    bundle = build(work / "hf", work / "bundle", quantize=quantize, candidates=candidates)
    record = bundle.manifest["provenance"]["build"]
    shutil.rmtree(work / "hf")
    started = time.perf_counter()
    shutil.copytree(bundle.path, work / "moved")
    shutil.rmtree(bundle.path)
    moved = Bundle.load(work / "moved")
    reports = verify(moved)
    verify_seconds = time.perf_counter() - started
    files = moved.manifest["files"]
    return {
        "shape": name, "config": shape, "fp32_weight_bytes_expected": weight_bytes(shape),
        "make_model_seconds": round(make_seconds, 1), "build": record,
        "copy_load_verify_elsewhere_seconds": round(verify_seconds, 1),
        "verified_elsewhere": {r.variant: r.passed for r in reports},
        "variants": {n: {"bytes": v["bytes"] + files.get(v["file"] + ".data", {}).get("bytes", 0)}
                     for n, v in moved.manifest["variants"].items()},
        "quantization": {n: {"gate_passed": r.get("gate_passed"), "gate": r.get("gate"), "missed_by": r.get("missed_by"),
                             **({"not_applicable": r["not_applicable"]} if "not_applicable" in r else {})}
                         for n, r in moved.manifest["quantization"]["results"].items()},
        "optimization": {"winner": moved.manifest["optimization"]["winner"],
                         "timing": moved.manifest["optimization"].get("timing"),
                         "candidates": [{k: c.get(k) for k in ("name", "parity_passed", "score_ms", "skipped", "error")}
                                        for c in moved.manifest["optimization"]["candidates"]]},
        "files": {rel: f["bytes"] for rel, f in files.items()},
        "process_peak_rss_bytes": peak_rss_bytes(),
    }


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "python": platform.python_version(), "platform": platform.platform()}


def markdown(doc: dict) -> str:
    gb = 1e9
    lines = [f"# Large decoders through edgetx build ({doc['date']})", "", f"Command: `{doc['command']}`", "",
             f"Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores, "
             f"{doc['machine']['memory_bytes'] / gb:.0f} GB (shared with other jobs)", ""]
    lines += ["| shape | fp32 weights GB | build peak RSS GB | ratio | build s | copy+verify s | variants |",
              "|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['shape']} | {r.get('fp32_weight_bytes_expected', 0) / gb:.2f} | - | - | - | - | "
                         f"{r.get('skipped') or r.get('error')} |")
            continue
        b = r["build"]
        lines.append(f"| {r['shape']} | {b['fp32_weight_bytes'] / gb:.2f} | {b['peak_rss_bytes'] / gb:.2f} | "
                     f"{b['peak_rss_vs_fp32_weights']} | {b['seconds']} | {r['copy_load_verify_elsewhere_seconds']} | "
                     + ", ".join(f"{n} {v['bytes'] / gb:.2f} GB" for n, v in r["variants"].items()) + " |")
    for r in doc["runs"]:
        if "build" not in r:
            continue
        lines += ["", f"## {r['shape']}: stages", "", "| stage | seconds | peak RSS so far GB |", "|---|---|---|"]
        lines += [f"| {s['stage']} | {s['seconds']} | {s['peak_rss_bytes'] / gb:.2f} |" for s in r["build"]["stages"]]
        lines += ["", f"Optimization ({r['optimization']['timing']}): winner {r['optimization']['winner']}; "
                  + "; ".join(f"{c['name']}: " + (c.get("skipped") or c.get("error") or
                                                  f"parity {c['parity_passed']}, {c['score_ms']} ms")
                              for c in r["optimization"]["candidates"]),
                  "", "Quantization: " + "; ".join(f"{n}: gate {'passed' if q['gate_passed'] else 'missed'} "
                                                   f"{q.get('missed_by') or ''} {q.get('gate') or ''}".strip()
                                                   for n, q in r["quantization"].items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="qwen2-0.5b,qwen2-1.5b")
    ap.add_argument("--quantize", default="int4", help="comma-separated schemes (edgetx.quant.schemes)")
    ap.add_argument("--candidates", default="", help="optimization candidates (default: all)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary folder under /tmp)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process: run one shape, print its JSON
    args = ap.parse_args()
    quantize = tuple(filter(None, args.quantize.split(",")))
    candidates = tuple(filter(None, args.candidates.split(","))) or None
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, Path(args.work), quantize, candidates)), flush=True)
        return
    runs = []
    for name in args.shapes.split(","):
        need = NEED_VS_WEIGHTS * weight_bytes(SHAPES[name])
        if available() < need:
            runs.append({"shape": name, "fp32_weight_bytes_expected": weight_bytes(SHAPES[name]),
                         "skipped": f"not run: needs about {need / 1e9:.1f} GB, {available() / 1e9:.1f} GB available"})
            print(f"{name}: {runs[-1]['skipped']}", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix=f"edgetx-big-{name}-", dir=args.work) as work:
            cmd = [sys.executable, __file__, "--one", name, "--work", work, "--quantize", args.quantize,
                   "--candidates", args.candidates]
            started = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                runs.append({"shape": name, "fp32_weight_bytes_expected": weight_bytes(SHAPES[name]),
                             "error": f"exit {proc.returncode}: {tail[:300]}"})
            else:
                runs.append({**json.loads(line[len("RESULT "):]), "wall_seconds": round(time.perf_counter() - started, 1)})
            print(f"{name}: {json.dumps(runs[-1])[:400]}", flush=True)
    date = dt.date.today().isoformat()
    doc = {"date": date, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{date}-big-models.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / f"{date}-big-models.md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
