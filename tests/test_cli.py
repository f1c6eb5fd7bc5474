"""The CLI: each verb works, and errors are one clear line with a non-zero exit, not a traceback."""

import json

from click.testing import CliRunner

from edgetx.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_has_examples():
    result = run("--help")
    assert result.exit_code == 0 and "edgetx generate" in result.output
    for verb in ("build", "verify", "generate", "inspect", "backends"):
        assert "Example" in run(verb, "--help").output or verb == "backends"


def test_verify_json(tiny_bundle_master):
    result = run("verify", tiny_bundle_master, "--json")
    assert result.exit_code == 0
    reports = json.loads(result.stdout)
    assert [r["variant"] for r in reports] == ["fp32", "int8-weight-only-a8", "int4"] and all(r["passed"] for r in reports)


def test_verify_fails_with_exit_1_on_tampered_bundle(tiny_bundle):
    (tiny_bundle / "golden.npz").write_bytes(b"not the golden file")
    result = run("verify", tiny_bundle)
    assert result.exit_code == 1
    assert "golden.npz does not match the sha256" in result.stderr
    assert "Traceback" not in result.output


def test_generate_streams_text(tiny_bundle_master):
    result = run("generate", tiny_bundle_master, "--prompt", "def ", "-n", "12")
    assert result.exit_code == 0
    assert result.stdout.startswith("def ") and len(result.stdout.encode()) >= 5
    assert "stopped by length" in result.stderr


def test_generate_bad_option_is_explained(tiny_bundle_master):
    result = run("generate", tiny_bundle_master, "--prompt", "x", "--top-p", "2")
    assert result.exit_code == 1 and "top_p must be in (0, 1]" in result.stderr


def test_inspect_bundle_and_onnx(tiny_bundle_master):
    info = json.loads(run("inspect", tiny_bundle_master, "--json").stdout)
    variant = info["variants"]["fp32"]
    assert variant["parity_passed"] is True and variant["opsets"]["ai.onnx"] == 18
    assert variant["ops"]["MatMul"] >= 2 * 4 and variant["parameters"] > 0
    onnx_info = json.loads(run("inspect", tiny_bundle_master / "fp32/model.onnx", "--json").stdout)
    assert [i["name"] for i in onnx_info["inputs"]][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert onnx_info["inputs"][1]["shape"] == ["batch", "past+seq"]
    assert "op histogram" in run("inspect", tiny_bundle_master).stderr


def test_missing_bundle_is_one_clear_line(tmp_path):
    result = run("generate", tmp_path / "nope", "--prompt", "x")
    assert result.exit_code == 1
    assert "no such bundle folder" in result.stderr and "Traceback" not in result.output


def test_build_refuses_unknown_model_folder(tmp_path):
    result = run("build", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "not a model edgetx can export" in result.stderr
    assert not (tmp_path / "out").exists()


def test_backends_lists_ort_cpu():
    result = run("backends")
    assert result.exit_code == 0 and "ort-cpu" in result.stderr


def test_verify_markdown(tiny_bundle_master):
    result = run("verify", tiny_bundle_master, "--markdown")
    assert result.exit_code == 0
    assert result.stdout.startswith("| variant | backend | check |") and "| cache == recompute |" in result.stdout
