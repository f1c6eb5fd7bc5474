"""`edgetx convert --to ort`: .ort files per variant, a reduced-build operator list, a mobile usability
report, all recorded in the manifest and verified on the ort-format backend."""

import json

import pytest
from click.testing import CliRunner

from conftest import run_python
from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.errors import BundleError


def test_convert_adds_verified_ort_files(tiny_bundle):
    result = CliRunner().invoke(main, ["convert", str(tiny_bundle), "--to", "ort"])
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(tiny_bundle)  # every new file is hash-listed
    for name, variant in bundle.variants.items():
        assert variant.formats == {"ort": variant.file.replace(".onnx", ".ort")}
        assert bundle.file(variant.formats["ort"]).read_bytes()[4:8] == b"ORTM"  # flatbuffer identifier
    config = bundle.file(bundle.manifest["mobile"]["required_operators"]).read_text()
    assert "ai.onnx;" in config and "MatMul" in config and ".partial" not in config and "/tmp" not in config
    assert "# - fp32/model.ort" in config  # the header names the bundle's own files
    usability = bundle.manifest["mobile"]["usability"]
    assert set(usability) == set(bundle.variants)
    nnapi = usability["fp32"]["eps"]["NNAPI"]
    assert 0 <= nnapi["supported_nodes"] <= nnapi["supported_nodes_if_fixed"] <= nnapi["nodes"]
    assert "input_ids" in usability["fp32"]["dynamic_inputs"] and nnapi["verdict"] in ("YES", "MAYBE", "NO")
    assert "ort-format" in result.stderr and "greedy" in result.stderr

    result = CliRunner().invoke(main, ["verify", str(tiny_bundle), "--backend", "ort-cpu", "--backend", "ort-format",
                                       "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    on_ort = [r for r in reports if r["backend"] == "ort-format"]
    assert len(on_ort) == len(bundle.variants) and all(r["passed"] and not r["skipped"] for r in on_ort)
    greedy = [c["tokens"] for r in on_ort for c in r["checks"] if c["name"] == "greedy decode"]
    assert all(agreed == steps for agreed, steps in greedy)
    result = CliRunner().invoke(main, ["inspect", str(tiny_bundle)])
    assert result.exit_code == 0 and "NNAPI" in result.stderr and "CoreML MLProgram" in result.stderr


def test_ort_format_needs_the_files(tiny_bundle):
    result = CliRunner().invoke(main, ["verify", str(tiny_bundle), "--backend", "ort-format"])
    assert result.exit_code == 1 and "has no ort file" in result.stderr and "edgetx convert" in result.stderr
    result = CliRunner().invoke(main, ["verify", str(tiny_bundle), "--all"])
    assert result.exit_code == 0, result.output  # skipped cells are not failures
    text = " ".join(result.stderr.split())  # rich wraps long lines (the bundle path) at the console width
    assert "skipped" in text and "--to ort" in text


def test_tampered_ort_file_is_caught(tiny_bundle):
    from edgetx.build.convert import to_ort

    to_ort(Bundle.load(tiny_bundle), ["fp32"])
    path = tiny_bundle / "fp32" / "model.ort"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the sha256"):
        Bundle.load(tiny_bundle)


def test_add_files_is_all_or_nothing(tiny_bundle, tmp_path):
    bundle = Bundle.load(tiny_bundle)
    before = (tiny_bundle / "manifest.json").read_text()
    extra = tmp_path / "extra.bin"
    extra.write_bytes(b"x")

    def broken_edit(manifest):
        manifest["variants"]["fp32"]["formats"] = {"ort": "fp32/not-written.ort"}

    with pytest.raises(BundleError, match="not listed under 'files'"):
        bundle.add_files({"fp32/extra.bin": extra}, broken_edit)
    assert (tiny_bundle / "manifest.json").read_text() == before  # manifest untouched
    Bundle.load(tiny_bundle)


def test_ort_format_runs_without_torch(tiny_bundle):
    from edgetx.build.convert import to_ort

    to_ort(Bundle.load(tiny_bundle), ["fp32"])
    code = ("import sys; sys.modules['torch'] = None\n"
            "from edgetx.bundle import Bundle\nfrom edgetx.verify.parity import verify\n"
            f"(r,) = verify(Bundle.load({str(tiny_bundle)!r}), backend='ort-format', variants=['fp32'])\n"
            "assert r.passed, r.to_dict()\nprint('ok')")
    result = run_python(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.slow
def test_build_with_ort(tiny_checkpoint, tmp_path):
    from edgetx.build import build

    bundle = build(tiny_checkpoint, tmp_path / "b", optimize=False, quantize=("int4",), formats=("ort",))
    assert all(v.formats and "ort" in v.formats for v in bundle.variants.values())
    assert "usability" in Bundle.load(bundle.path).manifest["mobile"]


def test_fixed_shape_copies(tiny_bundle):
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(tiny_bundle), "--to", "fixed"])
    assert result.exit_code == 1 and "batch=1,seq=1,past=1" in result.stderr  # says which dims to give
    result = runner.invoke(main, ["convert", str(tiny_bundle), "--to", "fixed", "--shape", "batch=1,seq=4"])
    assert result.exit_code == 1 and "missing: past" in result.stderr
    result = runner.invoke(main, ["convert", str(tiny_bundle), "--to", "fixed", "--shape", "batch=1,seq=1,past=x"])
    assert result.exit_code == 1 and "NAME=INTEGER" in result.stderr
    result = runner.invoke(main, ["convert", str(tiny_bundle), "--to", "fixed", "--shape", "batch=2,seq=1,past=15"])
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(tiny_bundle)
    import onnx

    for name, variant in bundle.variants.items():
        entry = bundle.manifest["variants"][name]
        assert entry["fixed_shape"]["dims"] == {"batch": 2, "seq": 1, "past": 15}
        model = onnx.load(str(bundle.file(variant.formats["onnx-fixed"])), load_external_data=False)
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
        assert shapes["input_ids"] == [2, 1] and shapes["attention_mask"] == [2, 16]
        assert shapes["past_key_values.0.key"][0] == 2 and shapes["past_key_values.0.key"][2] == 15
    assert bundle.manifest["variants"]["fp32"]["fixed_shape"]["max_abs_vs_dynamic"] <= 1e-5


def test_fixed_shape_copy_of_an_fp16_variant(tiny_checkpoint, tmp_path):
    """float16 conversion leaves Cast nodes out of topological order; fixing shapes must still work."""
    from edgetx.build import build
    from edgetx.build.convert import add_fixed

    bundle = build(tiny_checkpoint, tmp_path / "b", optimize=False, quantize=("fp16",))
    result = add_fixed(bundle, {"batch": 1, "seq": 1, "past": 7}, ["fp16"])
    assert "top-1 1.000" in result["fp16"]["check"]
