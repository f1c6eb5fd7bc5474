"""Bundle integrity: hashes, missing files, schema versions, paths, and atomic writes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from edgetx.build import build
from edgetx.bundle import SCHEMA_VERSION, Bundle, BundleWriter
from edgetx.errors import BundleError, EdgetxError


def _edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_built_bundle_loads_and_describes_itself(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    assert bundle.manifest["schema_version"] == SCHEMA_VERSION
    assert bundle.model["kind"] == "causal-lm"
    assert set(bundle.manifest["files"]) == {"fp32/model.onnx", "golden.npz", "quant.npz", "int8-weight-only-a8/model.onnx",
                                             "int4/model.onnx"}
    assert bundle.variant("fp32").parity["passed"] is True
    assert {"torch", "onnx", "onnxruntime"} <= set(bundle.manifest["provenance"]["versions"])
    assert len(bundle.manifest["provenance"]["source_sha256"]) == 64
    golden = bundle.golden()
    assert golden["decode.tokens"].shape == (24,)
    assert golden["prefill.logits"].shape[-1] == 256


def test_tampered_file_is_refused(tiny_bundle):
    onnx_file = tiny_bundle / "fp32/model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx does not match the sha256"):
        Bundle.load(tiny_bundle)
    Bundle.load(tiny_bundle, verify_hashes=False)  # the documented trusted fast path skips it


def test_missing_file_is_refused(tiny_bundle):
    (tiny_bundle / "golden.npz").unlink()
    with pytest.raises(BundleError, match=r"golden\.npz is missing"):
        Bundle.load(tiny_bundle)


def test_missing_manifest_is_refused(tiny_bundle):
    (tiny_bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.load(tiny_bundle)


def test_unknown_schema_version_is_named(tiny_bundle):
    _edit_manifest(tiny_bundle, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError, match="schema_version 99"):
        Bundle.load(tiny_bundle)


def test_paths_may_not_leave_the_bundle(tiny_bundle):
    def escape(m):
        m["files"]["../outside.onnx"] = m["files"].pop("fp32/model.onnx")
        m["variants"]["fp32"]["file"] = "../outside.onnx"
    _edit_manifest(tiny_bundle, escape)
    with pytest.raises(BundleError, match="stay inside the bundle"):
        Bundle.load(tiny_bundle)


def test_symlink_out_of_the_bundle_is_refused(tiny_bundle, tmp_path):
    outside = tmp_path / "elsewhere.npz"
    (tiny_bundle / "golden.npz").rename(outside)
    os.symlink(outside, tiny_bundle / "golden.npz")
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(tiny_bundle)


def test_variant_hash_must_agree_with_files_table(tiny_bundle):
    _edit_manifest(tiny_bundle, lambda m: m["variants"]["fp32"].update(sha256="0" * 64))
    with pytest.raises(BundleError, match="disagrees"):
        Bundle.load(tiny_bundle)


def test_unknown_variant_lists_the_known_ones(tiny_bundle):
    with pytest.raises(BundleError, match="no variant 'int3'; this bundle has fp32, int8-weight-only-a8, int4"):
        Bundle.load(tiny_bundle).variant("int3")


def test_writer_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with BundleWriter(target) as writer:
            writer.save_arrays("golden.npz", {"x": np.zeros(3)})
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_failed_build_stage_leaves_no_bundle(tiny_checkpoint, tmp_path):
    from contextlib import contextmanager

    @contextmanager
    def fail_at_verify(title):
        if "verify" in title:
            raise KeyboardInterrupt
        yield

    with pytest.raises(KeyboardInterrupt):
        build(tiny_checkpoint, tmp_path / "b", stage=fail_at_verify)
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_needs_force(tiny_checkpoint, tiny_bundle):
    with pytest.raises(EdgetxError, match="already exists"):
        build(tiny_checkpoint, tiny_bundle)


@pytest.mark.slow
def test_killed_build_leaves_no_bundle_and_next_build_succeeds(tiny_checkpoint, tmp_path):
    target = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "edgetx.cli", "build", str(tiny_checkpoint), "--out", str(target)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".b.*.partial/fp32")) and time.time() < deadline:
        time.sleep(0.05)  # wait until the build is writing into its temporary folder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    build(tiny_checkpoint, target)  # clears the killed build's leftovers, then succeeds
    Bundle.load(target)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
