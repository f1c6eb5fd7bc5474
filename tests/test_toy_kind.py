"""A third model kind added from this test file alone (no change under edgetx/ or runtimes/): a small
regressor (float features in, scores out) with its own kind class and exporter, built, verified, benched,
quantized behind a gate and converted to fixed shapes through the same pipeline as the built-in kinds."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgetx.build import build
from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.exporters.causal_lm import quiet_export
from edgetx.exporters.source import ExportSource
from edgetx.kinds import ModelKind, get_kind, register_kind
from edgetx.runtimes import Session
from edgetx.verify.parity import verify

FEATURES, HIDDEN, SCORES = 64, 128, 4


@register_kind
class ToyRegressor(ModelKind):
    """Everything but the name comes from ModelKind's defaults: golden outputs compared value by value,
    gates by the cosine of the outputs, timing and bench on the golden batch."""

    name = "toy-regressor"
    described_as = "a toy regressor"
    default_schemes = ("int8",)

    def io_problem(self, inputs: list[dict], outputs: list[dict]) -> str | None:
        if [s["name"] for s in inputs] != ["features"]:
            return "a toy regressor takes one input, 'features'"
        return None


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = torch.nn.Linear(FEATURES, HIDDEN), torch.nn.Linear(HIDDEN, SCORES)

    def forward(self, features):
        return self.down(torch.nn.functional.gelu(self.up(features)))


def toy_source() -> ExportSource:
    torch.manual_seed(0)
    model = Regressor().eval()
    rng = np.random.default_rng(0)
    batch = lambda rows: rng.standard_normal((rows, FEATURES)).astype(np.float32)  # noqa: E731
    golden_in, eval_in, calib_in = batch(16), batch(64), batch(32)

    def export(path, opset):
        with quiet_export():
            program = torch.onnx.export(model, (torch.from_numpy(golden_in),), dynamo=True, opset_version=opset,
                                        input_names=["features"], output_names=["scores"],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        program.save(str(path))

    @torch.no_grad()
    def golden():
        scores = model(torch.from_numpy(golden_in)).numpy()
        return {"golden.features": golden_in, "golden.scores": scores}, {"rows": len(golden_in)}

    weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    io = {"inputs": [{"name": "features", "dtype": "float32", "shape": ["batch", FEATURES]}],
          "outputs": [{"name": "scores", "dtype": "float32", "shape": ["batch", SCORES]}]}
    return ExportSource(
        name="toy", kind="toy-regressor", model={"name": "toy", "kind": "toy-regressor", "parameters": len(weights) // 4},
        tokenizer={}, io=io, export=export, capture_golden=golden, source="tests/test_toy_kind.py",
        source_sha256=hashlib.sha256(weights).hexdigest(),
        quant_data=lambda: {"eval.features": eval_in, "calib.features": calib_in}, module=model)


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory):
    return build(toy_source(), tmp_path_factory.mktemp("toy") / "bundle")


def test_toy_kind_builds_with_gated_variants(toy_bundle):
    bundle = Bundle.load(toy_bundle.path)
    assert bundle.model["kind"] == "toy-regressor" and get_kind("toy-regressor").name == "toy-regressor"
    assert set(bundle.variants) == {"fp32", "int8"}
    fp32 = bundle.variant("fp32").parity
    assert fp32["passed"] and [c["name"] for c in fp32["checks"]] == ["golden outputs"]
    gate = bundle.manifest["quantization"]["results"]["int8"]
    assert gate["gate_passed"] and gate["gate"]["cosine_mean"] > 0.995 and gate["gate"]["rows"] == 64
    assert bundle.manifest["optimization"]["score"] == ToyRegressor.score
    assert bundle.variant("int8").parity["passed"]


def test_toy_kind_verifies_and_catches_a_wrong_graph(toy_bundle, tmp_path):
    assert all(r.passed for r in verify(Bundle.load(toy_bundle.path)))
    result = CliRunner().invoke(main, ["verify", str(toy_bundle.path), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["variant"] for r in json.loads(result.stdout)] == ["fp32", "int8"]
    # a session runs it like any bundle, inputs checked against the manifest
    session = Session(toy_bundle.path)
    golden = session.bundle.golden()
    np.testing.assert_allclose(session.run({"features": golden["golden.features"]})["scores"], golden["golden.scores"],
                               atol=1e-5)
    assert get_kind("toy-regressor").io_problem([{"name": "x"}], []) is not None
    with pytest.raises(Exception, match="generate needs a causal-lm"):
        from edgetx.runtimes import Generator

        Generator(session)


def test_toy_kind_benches_and_converts_to_fixed_shapes(toy_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(toy_bundle.path, copy)
    result = CliRunner().invoke(main, ["bench", str(copy), "--threads", "1", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["variant"] for r in rows] == ["fp32", "int8"]
    assert all(r["latency"]["p50_ms"] > 0 and r["load_ms"] > 0 for r in rows)
    result = CliRunner().invoke(main, ["bench", str(copy), "--threads", "1", "--repeats", "1"])
    assert result.exit_code == 0 and "toy-regressor bench" in result.stderr
    result = CliRunner().invoke(main, ["convert", str(copy), "--to", "fixed", "--shape", "batch=2"])
    assert result.exit_code == 0, result.output
    entry = Bundle.load(copy).manifest["variants"]["fp32"]
    assert entry["fixed_shape"]["dims"] == {"batch": 2} and entry["fixed_shape"]["max_abs_vs_dynamic"] < 1e-5
    result = CliRunner().invoke(main, ["report", str(copy), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "output cosine vs fp32" in (copy / "report.md").read_text()
