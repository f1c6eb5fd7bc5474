"""The native verifier and bench (runtimes/native/, C on onnxruntime's C API): its sha256 and .npz reader against
Python's, its verify --json against `edgetx verify --json` on the same bundles, every corrupt bundle of
tests/test_bundle.py refused with the same key phrase, fuzzed inputs refused without a crash, bench, and the ARM64
build verifying the reference bundle under QEMU user mode."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

from conftest import REPO, backend_or_skip
from edgetx.bundle.npz import read_npz

NATIVE = REPO / "runtimes" / "native"


def _build(arch: str) -> str:
    """Provision the toolchain (idempotent) and build edgetx-native for `arch` (make: cheap when done)."""
    from edgetx.runtimes.environment import environment_root
    from edgetx.runtimes.native.provision import provision

    provision(environment_root("native"))
    compiler = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc"}[arch]
    if shutil.which(compiler) is None:
        message = f"{compiler} is missing: `make native-tools` installs it"
        if os.environ.get("CI") or "arm64" in os.environ.get("EDGETX_REQUIRE_BACKENDS", "").split(","):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(["make", "-C", str(NATIVE), f"ARCH={arch}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr  # -Wall -Wextra clean
    return str(NATIVE / "build" / arch / "edgetx-native")


@pytest.fixture(scope="module")
def native() -> str:
    return _build("x86_64")


def run(argv: list[str], prefix: list[str] | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*(prefix or []), *argv], capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode >= 0, f"killed by signal {-result.returncode}: {result.stderr}"  # never a crash
    return result


def python_verify(bundle) -> list[dict]:
    """`edgetx verify BUNDLE --json`, in this process (so a kind registered by a test is known)."""
    from click.testing import CliRunner

    from edgetx.cli import main

    result = CliRunner().invoke(main, ["verify", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_same_reports(native_reports: list[dict], python_reports: list[dict], quantized_max_abs: bool = True) -> None:
    """Same variants, keys, checks, verdicts, tolerances and greedy token counts; max |diff| within 1e-4 or 2x
    (onnxruntime 1.31.1 in C, the Python wheel's version in Python). `quantized_max_abs=False`: another CPU (ARM64),
    whose quantized kernels (int8 activations of MatMulNBits) round differently: there the KL-judged variants'
    max |diff| is not compared, their verdicts are."""
    assert [r["variant"] for r in native_reports] == [r["variant"] for r in python_reports]
    for mine, theirs in zip(native_reports, python_reports):
        assert set(mine) == set(theirs) and mine["backend"] == "native-cpu"
        for key in ("precision", "passed", "tolerance", "tolerance_label", "skipped"):
            assert mine[key] == theirs[key], (mine["variant"], key)
        assert [c["name"] for c in mine["checks"]] == [c["name"] for c in theirs["checks"]]
        for a, b in zip(mine["checks"], theirs["checks"]):
            assert set(a) == set(b) and (a["passed"], a["tokens"]) == (b["passed"], b["tokens"]), (mine["variant"], a, b)
            if not quantized_max_abs and theirs["tolerance"]["max_kld"] is not None:
                continue
            if b["max_abs"] is None:
                assert a["max_abs"] is None
            else:
                x, y = a["max_abs"], b["max_abs"]
                assert abs(x - y) <= 1e-4 or 0.5 <= x / y <= 2, (mine["variant"], a["name"], x, y)


def test_sha256_matches_hashlib(native, tiny_bundle, tmp_path):
    files = [p for p in tiny_bundle.rglob("*") if p.is_file()]
    rng = np.random.default_rng(0)
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, (1 << 16) + 7, (1 << 20) + 3):  # around the padding edges
        path = tmp_path / f"bytes-{size}"
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        files.append(path)
    result = run([native, "sha256", *map(str, files)])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _npz_summary(path) -> dict:
    names = {np.dtype(t): n for t, n in [("float32", "float32"), ("float64", "float64"), ("int64", "int64"),
                                           ("int32", "int32"), ("bool", "bool"), ("uint8", "uint8")]}
    return {k: {"dtype": names.get(v.dtype, "other"), "shape": list(v.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()} for k, v in read_npz(path).items()}


def test_npz_reader_matches_python(native, tiny_bundle, tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array(7, np.int64), "c": np.zeros((0, 5)),
              "d": np.array([True, False]), "e": np.arange(6, dtype=np.int32).reshape(1, 2, 3)}
    np.savez_compressed(tmp_path / "deflated.npz", **arrays)
    np.savez(tmp_path / "stored.npz", **arrays)
    with zipfile.ZipFile(tmp_path / "v2.npz", "w") as archive:  # an .npy 2.0 member
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, arrays["a"], version=(2, 0))
        archive.writestr("a.npy", buffer.getvalue())
    for path in (tiny_bundle / "golden.npz", tiny_bundle / "quant.npz", tmp_path / "deflated.npz",
                 tmp_path / "stored.npz", tmp_path / "v2.npz"):
        result = run([native, "npz", str(path)])
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == _npz_summary(path), path
    with zipfile.ZipFile(tiny_bundle / "golden.npz") as archive:  # edgetx writes golden.npz stored (np.savez)
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_hostile_npz_headers_are_refused_without_allocating(native, tmp_path):
    def member(header: str, data: bytes) -> bytes:
        text = header.encode().ljust(118) + b"\n"
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data

    cases = {"huge shape": (member("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000), }",
                                   b"\0" * 16), "holds"),
             "overflowing shape": (member("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, ), }",
                                          b""), "too large"),
             "pickle": (member("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", b"\0" * 8), "pickle"),
             "not npy": (b"hello", "not a .npy array")}
    for name, (payload, phrase) in cases.items():
        path = tmp_path / "x.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", payload)
        result = run([native, "npz", str(path)])
        assert result.returncode == 2 and phrase in result.stderr, (name, result.stderr)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", b"\0" * (64 << 20))
    result = run([native, "npz", str(bomb)])
    assert result.returncode == 2 and "zip bomb" in result.stderr


def test_fuzzed_npz_and_manifests_are_refused_never_crash(native, tiny_bundle):
    rng = random.Random(0)
    golden = (tiny_bundle / "golden.npz").read_bytes()
    target = tiny_bundle.parent / "fuzz.npz"
    outcomes = set()
    for case in range(150):
        data = bytearray(golden)
        if case % 3 == 0:
            data = data[: rng.randrange(len(data))]  # truncated
        else:
            for _ in range(rng.randint(1, 8)):  # garbled
                data[rng.randrange(len(data))] = rng.randrange(256)
        target.write_bytes(bytes(data))
        result = run([native, "npz", str(target)])
        assert result.returncode in (0, 2), result.stderr
        assert result.returncode == 0 or result.stderr.startswith("edgetx-native: ")
        outcomes.add(result.returncode)
    assert 2 in outcomes
    manifest = (tiny_bundle / "manifest.json").read_bytes()
    for case in range(80):
        data = bytearray(manifest)
        if case % 2 == 0:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.choice(b'{}[]":,0 \x00\xff')
        (tiny_bundle / "manifest.json").write_bytes(bytes(data))
        result = run([native, "verify", str(tiny_bundle), "--variant", "fp32"])
        assert result.returncode in (0, 1, 2), result.stderr
        if result.returncode == 2:
            assert result.stderr.startswith("edgetx-native: "), result.stderr
    (tiny_bundle / "manifest.json").write_bytes(manifest)


def test_verify_json_equals_edgetx_verify(native, tiny_bundle):
    result = run([native, "verify", str(tiny_bundle), "--json"])
    assert result.returncode == 0, result.stderr
    mine = json.loads(result.stdout)
    assert [r["variant"] for r in mine] == ["fp32", "int8-weight-only-a8", "int4"]
    assert_same_reports(mine, python_verify(tiny_bundle))
    greedy = [c for r in mine for c in r["checks"] if c["name"] == "greedy decode"]
    assert len(greedy) == 3 and all(c["tokens"] == [24, 24] for c in greedy)
    table = run([native, "verify", str(tiny_bundle), "--variant", "int4"])
    assert table.returncode == 0
    assert "max |diff|" in table.stdout and "KL<=0.05" in table.stdout and table.stdout.count("native-cpu") == 5


def _edit(bundle, change):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _tamper(bundle, _):
    path = bundle / "fp32/model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _escape(manifest):
    manifest["files"]["../outside.onnx"] = manifest["files"].pop("fp32/model.onnx")
    manifest["variants"]["fp32"]["file"] = "../outside.onnx"


def _symlink_out(bundle, tmp_path):
    outside = tmp_path / "elsewhere.npz"
    (bundle / "golden.npz").rename(outside)
    os.symlink(outside, bundle / "golden.npz")


CORRUPT = {  # tests/test_bundle.py's cases: (damage, the phrase both loaders say)
    "tampered file": (_tamper, r"model.onnx does not match the sha256"),
    "missing file": (lambda b, _: (b / "golden.npz").unlink(), "golden.npz is missing"),
    "missing manifest": (lambda b, _: (b / "manifest.json").unlink(), "manifest.json is missing"),
    "unknown schema_version": (lambda b, _: _edit(b, lambda m: m.update(schema_version=99)), "schema_version 99"),
    "path leaving the bundle": (lambda b, _: _edit(b, _escape), "stay inside the bundle"),
    "symlink out": (_symlink_out, "outside the bundle"),
    "variant hash disagrees": (lambda b, _: _edit(b, lambda m: m["variants"]["fp32"].update(sha256="0" * 64)),
                               "disagrees"),
    "unknown variant": (None, "no variant 'int3'; this bundle has fp32, int8-weight-only-a8, int4"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_bundles_are_refused_like_python(native, tiny_bundle, tmp_path, case):
    from edgetx.bundle import Bundle
    from edgetx.errors import BundleError

    damage, phrase = CORRUPT[case]
    if damage:
        damage(tiny_bundle, tmp_path)
    argv = [native, "verify", str(tiny_bundle)] + (["--variant", "int3"] if damage is None else [])
    result = run(argv)
    assert result.returncode == 2 and phrase in result.stderr, result.stderr
    with pytest.raises(BundleError, match=phrase.replace(".", r"\.")):  # the Python loader says the same
        Bundle.load(tiny_bundle).variant("int3")


def test_unsupported_kinds_and_onnxruntime_errors_are_reported(native, tiny_bundle):
    result = run([native, "bench", str(tiny_bundle), "--runs", "x"])
    assert result.returncode == 2 and "usage:" in result.stderr
    _edit(tiny_bundle, lambda m: m["model"].update(kind="image-classification"))
    result = run([native, "verify", str(tiny_bundle)])
    assert result.returncode == 2 and "not supported by the native verifier yet" in result.stderr
    _edit(tiny_bundle, lambda m: m["model"].update(kind="causal-lm"))
    # a model onnxruntime cannot load (hash updated to match): a failed "load and run" row and exit 1, no crash
    path = tiny_bundle / "int4/model.onnx"
    path.write_bytes(path.read_bytes()[:200])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def rehash(m):
        m["files"]["int4/model.onnx"]["sha256"] = digest
        m["variants"]["int4"].pop("sha256", None)
    _edit(tiny_bundle, rehash)
    result = run([native, "verify", str(tiny_bundle), "--variant", "int4", "--json"])
    assert result.returncode == 1, result.stderr
    (report,) = json.loads(result.stdout)
    assert [c["name"] for c in report["checks"]] == ["load and run"] and not report["passed"]
    assert "int4/model.onnx: onnxruntime failed while loading the model" in report["checks"][0]["detail"]


def test_bench_prints_its_table_and_json(native, tiny_bundle):
    result = run([native, "bench", str(tiny_bundle), "-p", "32", "-n", "16", "--runs", "2", "--threads", "1"])
    assert result.returncode == 0, result.stderr
    assert "decoder bench: -p 32 -n 16" in result.stdout and "decode tok/s" in result.stdout
    result = run([native, "bench", str(tiny_bundle), "--variant", "fp32", "-p", "32", "-n", "16", "--json"])
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    for key in ("load_ms", "file_mb", "peak_rss_mb", "time_to_first_token_ms", "prefill_tokens_per_s",
                "decode_tokens_per_s"):
        assert row[key] > 0, key
    assert all(row["decode_token_latency"][k] > 0 for k in ("p50_ms", "p90_ms", "p99_ms"))
    assert (row["prompt_tokens"], row["new_tokens"], row["backend"]) == (32, 16, "native-cpu")
    result = run([native, "bench", str(tiny_bundle), "-p", "250", "-n", "16"])
    assert result.returncode == 2 and "exceeds this model's 256 positions" in result.stderr


@pytest.fixture(scope="module")
def encoder_bundle(tmp_path_factory):
    import edgetx
    import module_models as mm
    from hf_models import wordpiece_tokenizer

    return edgetx.build(mm.encoder(), tmp_path_factory.mktemp("native") / "encoder", kind="encoder",
                        tokenizer=wordpiece_tokenizer(), pooling={"mode": "mean", "normalize": True},
                        optimize=False, quantize=("int8",)).path


def test_encoder_bundle_verifies_like_python(native, encoder_bundle):
    result = run([native, "verify", str(encoder_bundle), "--json"])
    assert result.returncode == 0, result.stderr
    mine = json.loads(result.stdout)
    assert [c["name"] for c in mine[0]["checks"]] == ["hidden states", "embeddings", "rows alone"]
    assert_same_reports(mine, python_verify(encoder_bundle))
    result = run([native, "bench", str(encoder_bundle), "--json", "--runs", "3"])
    assert result.returncode == 0 and all(r["latency"]["p50_ms"] > 0 for r in json.loads(result.stdout))


def test_generic_kind_verifies_like_python(native, tmp_path_factory):
    from edgetx.build import build
    from test_toy_kind import toy_source  # registers the toy kind, which keeps ModelKind's "golden outputs" check

    bundle = build(toy_source(), tmp_path_factory.mktemp("native") / "toy").path
    result = run([native, "verify", str(bundle), "--json"])
    assert result.returncode == 0, result.stderr
    assert "generic 'golden outputs' check" in result.stderr
    assert_same_reports(json.loads(result.stdout), python_verify(bundle))


@pytest.mark.slow
def test_arm64_build_verifies_the_reference_bundle_under_qemu(reference_bundle):
    backend_or_skip("arm64")  # its provisioned environment: qemu-aarch64 and an aarch64 sysroot (glibc, libstdc++)
    from edgetx.runtimes.arm64 import DEFAULT_CPU, QEMU
    from edgetx.runtimes.environment import environment_root

    binary = _build("aarch64")
    env_dir = environment_root("arm64") / "env"
    result = run([binary, "verify", str(reference_bundle.path), "--json"],
                 prefix=[str(env_dir / QEMU), "-L", str(env_dir / "sysroot")],
                 env={"PATH": "/usr/bin:/bin", "QEMU_CPU": DEFAULT_CPU})
    assert result.returncode == 0, result.stderr
    mine = json.loads(result.stdout)
    assert_same_reports(mine, python_verify(reference_bundle.path), quantized_max_abs=False)
    assert any(c["name"] == "greedy decode" and c["tokens"][0] == c["tokens"][1] for r in mine for c in r["checks"])
    result = run([binary, "bench", str(reference_bundle.path), "--variant", "fp32", "-p", "64", "-n", "16", "--runs",
                  "1", "--json"], prefix=[str(env_dir / QEMU), "-L", str(env_dir / "sysroot")],
                 env={"PATH": "/usr/bin:/bin", "QEMU_CPU": DEFAULT_CPU})
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["machine"] == "aarch64" and row["decode_tokens_per_s"] > 0
