"""The typed manifest: the published JSON Schema, messages that name the place, and bundles written by the
previous schema version (tests/data/v1-tiny-gpt, built by edgetx before schema version 2) that keep loading,
verifying and running."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetx.bundle import SCHEMA_VERSION, Bundle, Manifest
from edgetx.bundle.manifest import schema
from edgetx.cli import main
from edgetx.errors import BundleError
from edgetx.runtimes import GenerationConfig, Generator, Session
from edgetx.verify.parity import verify

V1 = Path(__file__).parent / "data" / "v1-tiny-gpt"


@pytest.fixture
def v1_bundle(tmp_path) -> Path:
    copy_ = tmp_path / "v1"
    shutil.copytree(V1, copy_)
    return copy_


def test_published_schema_is_a_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["properties"]["schema_version"] == {"const": SCHEMA_VERSION}


def test_built_bundle_follows_the_schema(tiny_bundle_master):
    import jsonschema

    document = json.loads((tiny_bundle_master / "manifest.json").read_text())
    jsonschema.Draft202012Validator(schema()).validate(document)  # the plain library, no edgetx in between
    manifest = Bundle.load(tiny_bundle_master).manifest
    assert isinstance(manifest, Manifest) and manifest.kind == "causal-lm"
    assert [r["pass"] for r in manifest.provenance["graph_edits"]] == ["logits-to-keep"]
    assert "kind" not in manifest.golden  # version 2: model.kind is the one place


def test_v1_bundle_loads_migrated_and_its_file_is_untouched(v1_bundle):
    before = (v1_bundle / "manifest.json").read_bytes()
    assert json.loads(before)["schema_version"] == 1
    bundle = Bundle.load(v1_bundle)
    assert bundle.manifest["schema_version"] == SCHEMA_VERSION == 2
    assert "kind" not in bundle.manifest.golden
    assert bundle.manifest.provenance["graph_edits"] == [{"pass": "logits-to-keep", "modified": True}]
    assert set(bundle.variants) == {"fp32", "int4"} and bundle.variant("int4").scheme == "int4"
    assert (v1_bundle / "manifest.json").read_bytes() == before


def test_v1_bundle_verifies_generates_and_benches(v1_bundle):
    reports = verify(Bundle.load(v1_bundle))
    assert [r.variant for r in reports] == ["fp32", "int4"] and all(r.passed for r in reports)
    text = Generator(Session(v1_bundle)).generate("def ", GenerationConfig(max_new_tokens=8))
    assert text
    result = CliRunner().invoke(main, ["bench", str(v1_bundle), "-p", "8", "-n", "4", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    stored = json.loads((v1_bundle / "manifest.json").read_text())  # storing results writes version 2
    assert stored["schema_version"] == 2 and stored["bench"] and "kind" not in stored["golden"]
    assert all(r.passed for r in verify(Bundle.load(v1_bundle)))
    result = CliRunner().invoke(main, ["inspect", str(v1_bundle)])
    assert result.exit_code == 0 and "quantized variants" in result.stderr


@pytest.mark.parametrize("change, message", [
    (lambda m: m["model"].update(vocab_size=0), r"model\.vocab_size must be a positive integer, got 0"),
    (lambda m: m["io"]["inputs"].clear(), r"io\.inputs must be a non-empty list of \{name, dtype, shape\}, got \[\]"),
    (lambda m: m["variants"]["fp32"].pop("file"), r"variants\['fp32'\] needs a 'file' string"),
    (lambda m: m["files"]["golden.npz"].update(sha256="abc"), r"files\['golden\.npz'\]\.sha256 must be a sha256"),
    (lambda m: m["tokenizer"].update(pad_token_id=-1), r"tokenizer\.pad_token_id must be a token id or null, got -1"),
    (lambda m: m.pop("provenance"), r"the manifest: 'provenance' is a required property"),
    (lambda m: m.update(schema_version=0), r"schema_version 0 is not one this edgetx reads \(it reads 1, 2\)"),
    (lambda m: m["model"].update(pooling={"mode": "sum"}), r"model\.pooling must be \{mode: mean \| cls \| max"),
])
def test_a_bad_manifest_names_the_place_and_what_was_expected(tiny_bundle_master, change, message):
    document = json.loads((tiny_bundle_master / "manifest.json").read_text())
    broken = copy.deepcopy(document)
    change(broken)
    with pytest.raises(BundleError, match=message):
        Manifest.checked(broken, "manifest.json")
    Manifest.checked(document, "manifest.json")  # the original is fine


def test_updates_that_break_the_schema_are_refused_and_leave_the_file(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    before = (tiny_bundle / "manifest.json").read_text()
    with pytest.raises(BundleError, match=r"bench must be|bench\['x'\]"):
        bundle.update_manifest("bench", {"x": 3})
    with pytest.raises(BundleError, match="written only by a build"):
        bundle.update_manifest("variants", {})
    assert (tiny_bundle / "manifest.json").read_text() == before
