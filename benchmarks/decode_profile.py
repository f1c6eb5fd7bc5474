"""Where a decoder's decode step spends its time: onnxruntime's profiler over greedy decode steps of one variant,
on the KV cache bound as the Generator binds it, summed per op type (and the heaviest nodes) per step.

    .venv/bin/python benchmarks/decode_profile.py dist/smollm2 --variant int4-grid-a8 [--threads 1] [--steps 32]

prints the tables and, with --json FILE, writes them. Kernel time only: what the step costs beyond it (the Python
loop, binding) is the difference to the wall time per step, printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def profile(bundle_path: Path, variant: str, threads: int, steps: int, prompt_tokens: int) -> dict:
    import onnxruntime as ort

    from edgetx.bundle import Bundle
    from edgetx.kinds.decoding import BoundDecodeLoop, cache_specs, shares_cache_buffer
    from edgetx.onnx_info import graph_skeleton
    from edgetx.runtimes.ort_cpu.binding import OrtCacheBinding

    bundle = Bundle.load(bundle_path, verify_hashes=False)
    path = bundle.file(bundle.variant(variant).file)
    inputs = bundle.io["inputs"]
    with tempfile.TemporaryDirectory(prefix="edgetx-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling, options.profile_file_prefix = True, os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        capacity = prompt_tokens + steps + 1 if shares_cache_buffer(graph_skeleton(path)) else None
        loop = BoundDecodeLoop(OrtCacheBinding(session, path, cache_specs(inputs), capacity), inputs)
        prompt = np.resize(bundle.golden()["prefill.input_ids"][0], prompt_tokens)[None].astype(np.int64)
        token = int(loop.prefill(prompt, logits_to_keep=1)["logits"][0, -1].argmax())
        decode_from_us = (time.time_ns() - session.get_profiling_start_time_ns()) / 1e3
        started = time.perf_counter()
        for _ in range(steps):
            token = int(loop.step(token)["logits"][0, -1].argmax())
        wall_ms = (time.perf_counter() - started) * 1e3 / steps
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    runs = 0.0
    for event in events:
        if event.get("ts", 0) < decode_from_us:
            continue
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            by_op[op] += event["dur"] / 1e3 / steps
            by_node[f"{op} {event['name'].removesuffix('_kernel_time')}"] += event["dur"] / 1e3 / steps
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            runs += event["dur"] / 1e3 / steps
    kernels = sum(by_op.values())
    return {"bundle": str(bundle_path), "variant": variant, "threads": threads, "steps": steps,
            "prompt_tokens": prompt_tokens, "cache": "in place" if capacity else "chained",
            "wall_ms_per_step": wall_ms, "run_ms_per_step": runs, "kernel_ms_per_step": kernels,
            "ops": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
            "top_nodes": dict(sorted(by_node.items(), key=lambda kv: -kv[1])[:12])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="example: .venv/bin/python benchmarks/decode_profile.py dist/smollm2 "
                                            "--variant int4-grid-a8 --threads 1 --json profile.json")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        parser.error(f"{args.bundle} is not a bundle (no manifest.json)")
    result = profile(args.bundle, args.variant, args.threads, args.steps, args.prompt_tokens)
    print(f"{args.bundle.name} {args.variant}, {args.threads} thread(s), {args.steps} decode steps after "
          f"{args.prompt_tokens} prompt tokens, KV cache {result['cache']}: wall {result['wall_ms_per_step']:.2f} ms "
          f"a step, onnxruntime run {result['run_ms_per_step']:.2f}, kernels {result['kernel_ms_per_step']:.2f}\n")
    print("| op type | ms / step | share of kernel time |\n|---|---|---|")
    for op, ms in result["ops"].items():
        print(f"| {op} | {ms:.3f} | {ms / result['kernel_ms_per_step']:.1%} |")
    print("\n| heaviest nodes | ms / step |\n|---|---|")
    for node, ms in result["top_nodes"].items():
        print(f"| {node} | {ms:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
