"""int4 schemes on float-trained (or random-init) weights, side by side: each scheme through the gate a build uses
(edgetx.quant.gates.quantize_gated, the bundle's own held-out and calibration text), reporting its first trial (every
weight MatMul quantized) and what the gate finally kept (mixed precision keeps nodes in fp32 when the first misses).

    .venv/bin/python benchmarks/int4_float_weights.py [--models reference,llama,qwen2,qwen2-decisive]
        [--schemes int4,int4-hqq,int4-gptq,int4-gptq-a8,int4-mixed] [--work /tmp/int4-float] [--max-kld 0.001]

Models: `reference` is the trained reference GPT (edgetx/models/checkpoint); `llama` and `qwen2` are the tiny
random-init families of tests/hf_models.py (hidden 64, 2 layers); `qwen2-decisive` is a small random-init Qwen2 whose
embedding, copied into its lm_head, is drawn at std 0.5 (tests/hf_models.save_big_decoder) so that the next token is
decided by a wide margin as in a trained model. `--max-kld` tightens the int4 gate's mean-KL bound (default: the
project's, 0.05) to see the schemes where plain int4 misses. Writes benchmarks/results/<date>-int4-float-weights
[-kld<bound>].json; the .md beside it is written by hand from the printed table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
from coverage import machine  # noqa: E402  (one description of the machine for every benchmark)

DECISIVE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=384, tie_word_embeddings=False)


def source(name: str, work: Path) -> Path | None:
    """The model folder to build for `name` (None: the reference checkpoint)."""
    import hf_models

    if name == "reference":
        return None
    folder = work / f"{name}-hf"
    if not folder.is_dir():
        if name == "qwen2-decisive":
            hf_models.save_big_decoder(folder, embedding_std=0.5, **DECISIVE)
        else:
            hf_models.save_tiny(name, folder)
    return folder


def bundle_for(name: str, work: Path) -> Path:
    """An fp32 bundle (with its gate and calibration data) of the model, built once under `work`."""
    from edgetx.build import build

    out = work / f"{name}-bundle"
    if not (out / "manifest.json").is_file():
        build(source(name, work), out, force=True, quantize=("int4",))
    return out


def measure(bundle_path: Path, scheme_name: str) -> dict:
    from edgetx.bundle import Bundle
    from edgetx.quant.gates import quantize_gated
    from edgetx.quant.schemes import NotApplicable, scheme

    bundle = Bundle.load(bundle_path)
    fp32 = bundle.file("fp32/model.onnx")
    data = dict(np.load(bundle.file("quant.npz")))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int4-float-") as tmp:
        try:
            variant = quantize_gated(scheme(scheme_name), fp32, Path(tmp) / "model.onnx", bundle.manifest["model"]["kind"],
                                     bundle.io["inputs"], data, bundle.manifest["model"])
        except NotApplicable as e:
            return {"scheme": scheme_name, "not_applicable": str(e)}
    first = variant.steps[0]
    fp32_bytes = fp32.stat().st_size
    return {"scheme": scheme_name, "seconds": round(time.perf_counter() - started, 1), "fp32_bytes": fp32_bytes,
            "first": {"kld_mean": first["kld_mean"], "top1": first["top1"], "bytes": first["bytes"],
                      "ratio": first["bytes"] / fp32_bytes, "passed": not first["missed_by"]},
            "final": {"passed": variant.passed, "kept_fp32": len(variant.kept_fp32), "eight_bit": len(variant.eight_bit),
                      "quantizable": variant.quantizable,
                      "kld_mean": variant.metrics["kld_mean"], "top1": variant.metrics["top1"],
                      "bytes": variant.bytes, "ratio": variant.bytes / fp32_bytes, "missed_by": variant.missed_by},
            "record": variant.to_dict()}


def table(rows: list[dict]) -> str:
    lines = ["| model | scheme | first trial: mean KL | top-1 | size / fp32 | gate | gate's final variant: nodes kept "
             "in fp32 (at 8-bit) | mean KL | size / fp32 | passed | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "not_applicable" in r:
            lines.append(f"| {r['model']} | {r['scheme']} | not applicable | | | | | | | |")
            continue
        f, g = r["first"], r["final"]
        eight = f" ({g['eight_bit']})" if g["eight_bit"] else ""
        lines.append(f"| {r['model']} | {r['scheme']} | {f['kld_mean']:.2e} | {f['top1']:.4f} | {f['ratio']:.3f} | "
                     f"{'pass' if f['passed'] else 'miss'} | {g['kept_fp32']}{eight} of {g['quantizable']} | "
                     f"{g['kld_mean']:.2e} | {g['ratio']:.3f} | {'yes' if g['passed'] else 'no'} | {r['seconds']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="reference,llama,qwen2,qwen2-decisive", help="comma-separated")
    parser.add_argument("--schemes", default="int4,int4-hqq,int4-gptq,int4-gptq-a8,int4-mixed",
                        help="comma-separated scheme names")
    parser.add_argument("--max-kld", type=float, default=None,
                        help="tighten the int4 gate's mean-KL bound to this (default: the project's)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "int4-float",
                        help="where the models and their fp32 bundles are kept between runs")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # its pass infrastructure logs each removal at INFO
    if args.max_kld is not None:
        import dataclasses

        from edgetx.verify.tolerances import QUANTIZED

        QUANTIZED["int4"] = dataclasses.replace(QUANTIZED["int4"], max_kld=args.max_kld)
    rows = []
    for model in args.models.split(","):
        path = bundle_for(model, args.work)
        for name in args.schemes.split(","):
            row = {"model": model, **measure(path, name)}
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if not args.no_write:
        date = dt.date.today().isoformat()
        command = "python benchmarks/int4_float_weights.py " + " ".join(sys.argv[1:])
        stem = f"{date}-int4-float-weights" + (f"-kld{args.max_kld:g}" if args.max_kld is not None else "")
        (RESULTS / f"{stem}.json").write_text(json.dumps(
            {"date": date, "machine": machine(), "command": command, "max_kld": args.max_kld, "rows": rows},
            indent=1, default=str))
        print(f"wrote {RESULTS / f'{stem}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
