"""Interruption: a build SIGKILLed at any point leaves at its target either nothing, the bundle that was
there before, or the complete new one — never a bundle that loads but is incomplete — and the next
build cleans up and succeeds. `benchmarks/reliability.py kills --times N` runs this for longer."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetx.bundle import Bundle, BundleWriter
from edgetx.errors import BundleError

# A build that says which stage it is in, so a kill can be aimed at a random point of a random stage.
BUILD = """
import sys
from contextlib import contextmanager
from edgetx.build import build
@contextmanager
def stage(title):
    print("STAGE", title, flush=True)
    yield
build(sys.argv[1], sys.argv[2], force=True, stage=stage)
print("DONE", flush=True)
"""

BUILD_STAGES = 9  # of the tiny checkpoint's default build: load ... quantize int4, write manifest

# A writer without torch: the same BundleWriter a build uses, writing files with pauses, so that
# kills land everywhere in writing, hashing, fsync and the renames of commit().
WRITER = """
import sys, time
import numpy as np
from edgetx.bundle import BundleWriter
target, version, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with BundleWriter(target, overwrite=True) as writer:
    print("START", flush=True)
    for i in range(6):
        writer.save_arrays(f"v{i % 3}/part{i}.npz", {"x": np.full(20000, version, np.float32)})
        time.sleep(pause)
    writer.commit({"model": {"version": version}, "io": {}, "golden": {},  "provenance": {},
                   "variants": {"fp32": {"precision": "fp32", "file": "v0/part0.npz"}}})
print("DONE", flush=True)
"""


def inspect(folder: Path, target: Path) -> dict:
    """What a killed build left: the target's state and every bundle-looking folder that is not whole."""
    state = "absent"
    if target.exists():
        try:
            bundle = Bundle.load(target)
            state = "loads"
            missing = [v.file for v in bundle.variants.values() if not (target / v.file).is_file()]
            state = "INCOMPLETE" if missing else state
        except BundleError as e:
            state = f"INCOMPLETE ({e})"
    loadable_but_incomplete = []
    for path in folder.iterdir():
        if path != target and (path / "manifest.json").is_file():
            try:
                bundle = Bundle.load(path)
            except BundleError:
                continue  # refused: an app cannot load it
            if any(not (path / v.file).is_file() for v in bundle.variants.values()):
                loadable_but_incomplete.append(path.name)
    leftovers = sorted(p.name for p in folder.iterdir() if p != target and p.name.startswith(f".{target.name}."))
    return {"target": state, "loadable_but_incomplete": loadable_but_incomplete, "leftovers": leftovers}


def kill_build_at_random(checkpoint: Path, target: Path, rng: random.Random, max_delay: float = 2.0) -> str:
    """Run a build of `checkpoint` into `target` and SIGKILL it at a random point of a random stage;
    return where it was killed ("" if it finished first)."""
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(checkpoint), str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    chosen, seen, delay = rng.randrange(BUILD_STAGES), -1, rng.uniform(0, max_delay)
    stage = ""
    for line in proc.stdout:
        if line.startswith("DONE"):
            break
        if line.startswith("STAGE"):
            seen, stage = seen + 1, line[6:].strip()
            if seen == chosen:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
    proc.stdout.close()
    return_code = proc.wait()
    return f"{stage} (+{delay:.1f} s)" if return_code == -signal.SIGKILL else ""


def kill_writer_at(target: Path, version: int, after: float, pause: float = 0.02) -> tuple[bool, float]:
    """Run the torch-free writer and SIGKILL it `after` seconds into its writing; (killed?, seconds it
    spent writing if it finished)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(version), str(pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "START"
    started = time.perf_counter()
    try:
        proc.wait(timeout=after)
        return False, time.perf_counter() - started
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        return proc.wait() == -signal.SIGKILL, 0.0
    finally:
        proc.stdout.close()


def version_at(target: Path) -> int | None:
    return Bundle.load(target).model["version"] if target.exists() else None


def test_writer_killed_at_random_points_never_leaves_an_incomplete_bundle(tmp_path):
    target, rng = tmp_path / "b", random.Random(9)
    duration = max(kill_writer_at(target, 0, after=60)[1] for _ in range(2))  # whole writes, timed
    kills = 0
    for version in range(1, 13):
        before = version_at(target)
        kills += kill_writer_at(target, version, after=rng.uniform(0, duration))[0]
        report = inspect(tmp_path, target)
        assert report["target"] in ("absent", "loads") and not report["loadable_but_incomplete"], report
        assert version_at(target) in (before, version, None)
        if report["target"] == "absent":  # killed between the two renames of commit(): the next build restores
            with BundleWriter(target, overwrite=True):
                pass
            assert version_at(target) == before
    assert kills >= 6, "most attempts should have been killed mid-write"
    assert not kill_writer_at(target, 99, after=60)[0]
    assert version_at(target) == 99 and inspect(tmp_path, target)["leftovers"] == []


def test_kill_between_the_renames_of_commit_restores_the_old_bundle(tmp_path):
    """The one moment nothing is at the target: the old bundle moved aside, the new not yet in place."""
    target = tmp_path / "b"
    assert not kill_writer_at(target, 1, after=60)[0]
    pause_between = "import os, time\n_replace = os.replace\n" \
        "def replace(a, b):\n    _replace(a, b)\n    if '.old-' in str(b):\n        print('ASIDE', flush=True)\n" \
        "        time.sleep(60)\nos.replace = replace\n"
    proc = subprocess.Popen([sys.executable, "-c", pause_between + WRITER, str(target), "2", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "START"
    assert proc.stdout.readline().strip() == "ASIDE"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists() and len(list(tmp_path.glob(".b.old-*"))) == 1
    with pytest.raises(BundleError, match="already exists"):
        BundleWriter(target)  # puts the old bundle back first, then refuses to overwrite it
    assert version_at(target) == 1 and inspect(tmp_path, target)["leftovers"] == []


def test_leftovers_of_other_targets_and_live_builds_are_left_alone(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    mine = [tmp_path / f".bb.{dead_pid}.x.partial", tmp_path / f".b.{os.getpid()}.x.partial"]
    for path in [*mine, tmp_path / f".b.{dead_pid}.x.partial", tmp_path / f".b.old-{dead_pid}"]:
        path.mkdir()
    (tmp_path / "b").mkdir()
    with BundleWriter(tmp_path / "b", overwrite=True):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b", *(p.name for p in mine)])


@pytest.mark.slow
def test_build_killed_at_a_random_stage_over_an_existing_bundle(tiny_checkpoint, tiny_bundle_master, tmp_path):
    from edgetx.build import build

    target = tmp_path / "b"
    shutil.copytree(tiny_bundle_master, target)
    where = kill_build_at_random(tiny_checkpoint, target, random.Random(os.getpid()))
    report = inspect(tmp_path, target)
    assert report["target"] in ("absent", "loads") and not report["loadable_but_incomplete"], (where, report)
    build(tiny_checkpoint, target, force=True)  # the next build cleans up and succeeds
    Bundle.load(target)
    assert inspect(tmp_path, target) == {"target": "loads", "loadable_but_incomplete": [], "leftovers": []}
