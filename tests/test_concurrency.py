"""Concurrency: one Session shared by threads gives exactly the serial outputs, Generators sharing a
session keep their KV caches apart, and apps loading a bundle while a build replaces it see either a
whole bundle or a clean BundleError. `benchmarks/reliability.py soak` runs this for minutes."""

from __future__ import annotations

import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgetx.bundle import Bundle, BundleWriter
from edgetx.errors import BundleError
from edgetx.runtimes import GenerationConfig, Generator, Session
from test_fuzz import make_feeds

THREADS, RUNS = 8, 1000


def varied_feeds(session: Session, count: int = 12) -> list[dict[str, np.ndarray]]:
    """Feeds of different batch sizes, lengths and cache lengths, so that concurrent runs differ."""
    rng = random.Random(0)
    return [make_feeds(session.inputs, rng.randint(1, 2), rng.randint(1, 6), rng.randint(0, 5), seed)
            for seed in range(count)]


def hammer(session: Session, cases: list[dict], want: list[dict], threads: int, runs: int) -> tuple[int, list[str]]:
    """`threads` threads each run `runs` random cases on `session`; (runs done, mismatches vs `want`)."""
    mismatches: list[str] = []
    start = threading.Barrier(threads)

    def worker(seed: int) -> int:
        rng, done = random.Random(seed), 0
        start.wait()
        for _ in range(runs):
            k = rng.randrange(len(cases))
            out = session.run(cases[k])
            bad = [name for name in want[k] if not np.array_equal(out[name], want[k][name])]
            if bad:
                mismatches.append(f"thread {seed} case {k}: {', '.join(bad)} differ from the serial run")
            done += 1
        return done

    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(worker, range(threads)))
    return total, mismatches


@pytest.mark.slow
def test_one_session_shared_by_8_threads_gives_the_serial_outputs(tiny_bundle_master):
    session = Session(tiny_bundle_master)
    cases = varied_feeds(session)
    want = [session.run(feeds) for feeds in cases]
    total, mismatches = hammer(session, cases, want, THREADS, RUNS)
    assert total == THREADS * RUNS
    assert not mismatches, mismatches[:5]


def generation_jobs() -> list[tuple[list[int], GenerationConfig]]:
    prompts = [b"def f(x):\n    return", b"import os", b"class Stack:\n", b"x = [", b"for i in range(10):", b"#"]
    return [(list(p), GenerationConfig(max_new_tokens=24, temperature=0.0 if i % 2 else 0.9, top_k=None if i % 2 else 20,
                                       seed=i)) for i, p in enumerate(prompts)]


def test_generators_sharing_a_session_keep_their_caches_apart(tiny_bundle_master):
    session = Session(tiny_bundle_master)
    jobs = generation_jobs()
    want = [list(Generator(session).tokens(prompt, config)) for prompt, config in jobs]
    assert len({tuple(w) for w in want}) == len(want)  # distinct outputs, so any mixing would show
    start = threading.Barrier(len(jobs))

    def run(i: int) -> list[list[int]]:
        generator = Generator(session)
        start.wait()
        return [list(generator.tokens(*jobs[i])) for _ in range(4)]

    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(run, range(len(jobs))))
    for i, runs in enumerate(got):
        assert runs == [want[i]] * 4, f"generator {i} mixed with another"


def test_apps_loading_while_a_build_replaces_the_bundle_see_whole_bundles(tiny_bundle_master, tmp_path):
    """Loaders racing `BundleWriter.commit(overwrite)` get a complete, hash-checked bundle or a BundleError."""
    target = tmp_path / "b"
    shutil.copytree(tiny_bundle_master, target)
    manifest = Bundle.load(target).manifest
    stop, outcomes, lock = threading.Event(), {"ok": 0, "BundleError": 0}, threading.Lock()
    others: list[str] = []

    def load_repeatedly() -> None:
        while not stop.is_set():
            try:
                Bundle.load(target).golden()
                kind = "ok"
            except BundleError:
                kind = "BundleError"
            except Exception as e:  # noqa: BLE001 - what this test looks for
                others.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                outcomes[kind] += 1

    loaders = [threading.Thread(target=load_repeatedly) for _ in range(3)]
    for thread in loaders:
        thread.start()
    try:
        for _ in range(15):
            with BundleWriter(target, overwrite=True) as writer:
                for rel in manifest["files"]:
                    shutil.copyfile(target / rel if (target / rel).exists() else tiny_bundle_master / rel, writer.path(rel))
                writer.commit({k: v for k, v in manifest.items() if k not in ("files", "schema_version")})
    finally:
        stop.set()
        for thread in loaders:
            thread.join()
    assert not others, others[:5]
    assert outcomes["ok"] > 0
    Bundle.load(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]

