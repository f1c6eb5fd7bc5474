"""edgetx reliability, measured for longer than CI can: fuzzing, a soak under threads, and kills.

    .venv/bin/python benchmarks/reliability.py fuzz --cases 5000     # cases / refused / crashes / hangs per target
    .venv/bin/python benchmarks/reliability.py soak --minutes 3      # threads on one Session + Generators: RSS growth
    .venv/bin/python benchmarks/reliability.py kills --times 20      # SIGKILL builds at random points

The fuzz targets, the build driver and the bundle inspection are the ones tests/test_fuzz.py and
tests/test_interrupt.py run at CI size. The tiny 2-layer random GPT (tests/conftest.py) is built
once into .cache/reliability/. Exit status 1 if any case crashed, hung or broke a rule.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CACHE = ROOT / ".cache" / "reliability"
console = Console(width=max(Console().width, 120))
COLUMNS = ("cases", "ran", "refused", "skipped", "bugs", "crashes", "hangs", "noise")
TARGETS = {"manifest": 0.15, "onnx": 0.15, "npz": 0.15, "tokenizer": 0.15, "inputs": 0.25, "generation": 0.15}


def tiny_checkpoint() -> Path:
    """The tests' tiny random GPT checkpoint, saved once."""
    path = CACHE / "tiny-checkpoint"
    if not (path / "model.safetensors").is_file():
        import torch
        from conftest import tiny_config
        from safetensors.torch import save_model

        from edgetx.models.model import GPT

        torch.manual_seed(0)
        path.mkdir(parents=True, exist_ok=True)
        model = GPT(tiny_config())
        model.config.save(path / "config.json")
        save_model(model, str(path / "model.safetensors"))
    return path


def tiny_bundle() -> Path:
    from edgetx.bundle import Bundle
    from edgetx.errors import BundleError

    path = CACHE / "tiny-bundle"
    try:
        Bundle.load(path)
    except BundleError:
        from edgetx.build import build

        console.print(f"building the tiny bundle into {path} ...")
        build(tiny_checkpoint(), path, force=True)
    return path


# --- fuzz ---------------------------------------------------------------------------------------
def run_target(name: str, cases: int, seed: int, bundle: Path, case_timeout: float) -> dict:
    """Run one fuzz target for `cases` hypothesis examples in this process; counts by outcome."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed
    from hypothesis import strategies as st

    import test_fuzz as tf
    from edgetx.runtimes import Generator, Session

    work = CACHE / "fuzz-work"
    shutil.rmtree(work, ignore_errors=True)
    ws = tf.Workspace(bundle, work / "tiny")
    worker = tf.OrtWorker(timeout=case_timeout)
    runners = {
        "manifest": (st.tuples(st.booleans(), tf.json_edits(), tf.byte_edits()), lambda c: tf.run_manifest_case(ws, c)),
        "onnx": (tf.onnx_edits(), lambda c: tf.run_onnx_case(ws, worker, c)),
        "npz": (tf.npz_edits(), lambda c: tf.run_npz_case(ws, c)),
        "tokenizer": (tf.tokenizer_cases(), lambda c: tf.run_tokenizer_case(hf, c)),
        "inputs": (tf.feed_cases(), lambda c: tf.run_feed_case(session, c)),
        "generation": (tf.generation_cases(), lambda c: tf.run_generation_case(Generator(session), c)),
    }
    if name == "tokenizer":
        hf = tf.with_hf_tokenizer(tf.Workspace(bundle, work / "tiny-hf"))
    session = Session(bundle)
    strategy, runner = runners[name]
    counts: Counter = Counter()
    examples: dict[str, str] = {}

    @fixed_seed(seed)
    @settings(max_examples=cases, deadline=None, database=None, derandomize=False, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def case(data) -> None:
        faulthandler.dump_traceback_later(case_timeout, exit=True)  # a case that hangs in-process ends the run
        kind, message = runner(data)
        faulthandler.cancel_dump_traceback_later()
        counts[kind] += 1
        if kind.startswith("BUG") or kind in ("CRASH", "HANG", "NOISE"):
            examples.setdefault(kind, f"{message[:300]} <- {data!r:.300}")

    case()
    worker.close()
    return {"counts": dict(counts), "examples": examples}


def fuzz(args: argparse.Namespace) -> int:
    bundle = tiny_bundle()
    table = Table(title=f"fuzzing edgetx ({args.cases} cases, seed {args.seed})")
    for column in ("target", "cases", "ran", "refused (edgetx error)", "skipped", "bugs", "crashes", "hangs", "noise",
                   "seconds"):
        table.add_column(column, justify="left" if column == "target" else "right")
    totals, failed = Counter(), []
    for name, share in TARGETS.items():
        cases = max(1, round(args.cases * share))
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "_target", name, str(cases), str(args.seed), str(bundle),
                               str(args.case_timeout)], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0 or not proc.stdout.strip():  # killed by a signal, or the watchdog fired
            kind = "CRASH" if proc.returncode < 0 else "HANG" if "Timeout" in proc.stderr else "CRASH"
            result = {"counts": {kind: 1}, "examples": {kind: proc.stderr[-600:]}}
        else:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        counts = Counter(result["counts"])
        row = {"cases": sum(counts.values()), "ran": counts["ok"],
               "refused": sum(v for k, v in counts.items() if k.endswith("Error") and not k.startswith("BUG")),
               "skipped": counts["skipped"],
               "bugs": sum(v for k, v in counts.items() if k.startswith("BUG")),
               "crashes": counts["CRASH"], "hangs": counts["HANG"], "noise": counts["NOISE"]}
        totals.update(row)
        table.add_row(name, *(str(row[k]) for k in COLUMNS), f"{seconds:.0f}")
        failed += [f"{name}: {kind}: {text}" for kind, text in result["examples"].items()]
    table.add_row("all", *(str(totals[k]) for k in COLUMNS), "", style="bold")
    console.print(table)
    for line in failed:
        console.print(f"[red]{line}[/]", highlight=False)
    console.print(f"cases fuzzed {totals['cases']}, crashes {totals['crashes']}, hangs {totals['hangs']}, "
                  f"bugs {totals['bugs']}, stdout noise {totals['noise']}")
    return 1 if failed else 0


# --- soak ---------------------------------------------------------------------------------------
def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(args: argparse.Namespace) -> int:
    from test_concurrency import generation_jobs, varied_feeds

    from edgetx.runtimes import GenerationConfig, Generator, Session

    bundle = Path(args.bundle) if args.bundle else tiny_bundle()
    session = Session(bundle)
    rss_loaded = rss_mb()
    cases = varied_feeds(session, 16)
    want = [session.run(feeds) for feeds in cases]
    jobs = [(prompt, GenerationConfig(**{**config.__dict__, "max_new_tokens": 48})) for prompt, config in generation_jobs()]
    want_tokens = [list(Generator(session).tokens(prompt, config)) for prompt, config in jobs]
    stop, lock = threading.Event(), threading.Lock()
    stats: Counter = Counter()
    problems: list[str] = []

    def runner(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            k = rng.randrange(len(cases))
            out = session.run(cases[k])
            ok = all(np.array_equal(out[n], want[k][n]) for n in want[k])
            with lock:
                stats["runs"] += 1
                if not ok:
                    problems.append(f"run of case {k} differs from the serial one")

    def generator(seed: int) -> None:
        rng, gen = random.Random(seed), Generator(session)
        while not stop.is_set():
            k = rng.randrange(len(jobs))
            tokens = list(gen.tokens(*jobs[k]))
            with lock:
                stats["generations"] += 1
                stats["tokens"] += len(tokens)
                if tokens != want_tokens[k]:
                    problems.append(f"generation {k} differs from the serial one")

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(args.threads)]
    threads += [threading.Thread(target=generator, args=(100 + i,)) for i in range(args.generators)]
    for thread in threads:
        thread.start()
    warmup = max(10.0, args.minutes * 6)  # 10% of the run: arenas and caches reach their working size
    console.print(f"soak: {args.threads} threads running {bundle.name} + {args.generators} Generators for "
                  f"{args.minutes} min (RSS measured after {warmup:.0f} s of warm-up)")
    started = time.perf_counter()
    samples: list[tuple[float, float]] = []
    while (elapsed := time.perf_counter() - started) < args.minutes * 60:
        time.sleep(min(5.0, args.minutes * 60 - elapsed))
        samples.append((time.perf_counter() - started, rss_mb()))
    stop.set()
    for thread in threads:
        thread.join()
    after = [(t, r) for t, r in samples if t >= warmup] or samples
    start_rss, end_rss = after[0][1], after[-1][1]
    growth = 100 * (end_rss - start_rss) / start_rss
    slope = (statistics.linear_regression([t for t, _ in after], [r for _, r in after]).slope * 60
             if len(after) > 2 else float("nan"))
    table = Table(title="soak")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in [("bundle", str(bundle)), ("threads x runs", f"{args.threads} x {stats['runs'] // args.threads}"),
                       ("session runs", stats["runs"]), ("generations (tokens)", f"{stats['generations']} "
                       f"({stats['tokens']})"), ("results differing from serial", len(problems)),
                       ("RSS after load (MB)", f"{rss_loaded:.1f}"), ("RSS at start, after warm-up (MB)", f"{start_rss:.1f}"),
                       ("RSS at end (MB)", f"{end_rss:.1f}"), ("RSS peak (MB)", f"{max(r for _, r in samples):.1f}"),
                       ("RSS growth start -> end", f"{growth:+.2f}%"), ("RSS trend (MB/min, least squares)", f"{slope:+.3f}")]:
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"threads x runs {args.threads} x {stats['runs'] // args.threads}, mismatches {len(problems)}, "
                  f"RSS growth {growth:+.2f}% (goal < 5%)")
    return 1 if problems or growth >= 5 else 0


# --- kills --------------------------------------------------------------------------------------
def kills(args: argparse.Namespace) -> int:
    import test_interrupt as ti

    from edgetx.bundle import Bundle

    checkpoint, rng = tiny_checkpoint(), random.Random(args.seed)
    work = CACHE / "kills"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    target = work / "b"
    durations = []
    for _ in range(2):  # the second, warm build is what the killed ones take
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", ti.BUILD, str(checkpoint), str(target)], check=True, capture_output=True)
        durations.append(time.perf_counter() - started)
    duration = min(durations)
    pristine = work / "pristine"  # a whole bundle to put at the target before every other build
    shutil.copytree(target, pristine)
    console.print(f"kills: a whole build takes {duration:.0f} s; killing {args.times} builds at random times in it")
    states, stages, incomplete, killed = Counter(), Counter(), [], 0
    for attempt in range(args.times):
        if target.exists():  # every other build replaces a bundle, the others start from nothing
            shutil.rmtree(target)
        if attempt % 2 == 0:
            shutil.copytree(pristine, target)
        old = Bundle.load(target).manifest["created"] if target.exists() else None
        proc = subprocess.Popen([sys.executable, "-c", ti.BUILD, str(checkpoint), str(target)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        timer = threading.Timer(rng.uniform(0.2, duration), proc.kill)
        timer.start()
        stage = "start-up"
        for line in proc.stdout:
            stage = line[6:].strip() if line.startswith("STAGE") else "exit, after the build" if line.startswith("DONE") \
                else stage
        timer.cancel()
        proc.stdout.close()
        died = proc.wait() < 0
        killed += died
        stages[stage if died else "finished before the kill"] += 1
        report = ti.inspect(work, target)
        state = report["target"]
        if state == "loads":
            state = "old bundle" if Bundle.load(target).manifest["created"] == old else "new bundle"
        elif state == "absent":
            state = "absent (fresh build)" if old is None else "absent (old one moved aside; next build restores it)"
        states[state] += 1
        if state.startswith("INCOMPLETE") or report["loadable_but_incomplete"]:
            incomplete.append(f"attempt {attempt}: {report}")
        console.print(f"  {attempt + 1:3d}/{args.times}: {'killed in ' + stage if died else 'finished'}; "
                      f"target: {state}; leftovers: {len(report['leftovers'])}", highlight=False)
    final = subprocess.run([sys.executable, "-c", ti.BUILD, str(checkpoint), str(target)], capture_output=True, text=True)
    after = ti.inspect(work, target)
    table = Table(title=f"kills ({args.times} builds, seed {args.seed})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("builds started", args.times), ("killed (SIGKILL)", killed),
            *((f"  killed in: {k}", v) for k, v in stages.most_common()),
            *((f"  target after: {k}", v) for k, v in states.most_common()),
            ("incomplete bundles found", len(incomplete)),
            ("next build succeeded", final.returncode == 0 and after["target"] == "loads"),
            ("leftovers after it", len(after["leftovers"]))]
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    for line in incomplete:
        console.print(f"[red]{line}[/]", highlight=False)
    console.print(f"kills survived {killed}, incomplete bundles found {len(incomplete)}, "
                  f"next build {'succeeded' if final.returncode == 0 else 'FAILED'}")
    return 1 if incomplete or final.returncode or after["target"] != "loads" or after["leftovers"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fuzz", help="fuzz every target; print cases / crashes / hangs")
    p.add_argument("--cases", type=int, default=5000)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--case-timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    p = sub.add_parser("soak", help="threads on one Session + Generators; print RSS growth")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--generators", type=int, default=4)
    p.add_argument("--bundle", help="bundle to soak (default: the tiny test bundle)")
    p = sub.add_parser("kills", help="SIGKILL builds at random points; print kills survived / incomplete bundles")
    p.add_argument("--times", type=int, default=20)
    p.add_argument("--seed", type=int, default=int(time.time()))
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "_target":  # one fuzz target, in its own process
        name, cases, seed, bundle, timeout = sys.argv[2:7]
        print(json.dumps(run_target(name, int(cases), int(seed), Path(bundle), float(timeout))))
        return 0
    args = parser.parse_args(argv)
    return {"fuzz": fuzz, "soak": soak, "kills": kills}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
