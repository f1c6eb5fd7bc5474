"""Graph optimization: candidates are verified and timed; the fastest that passes parity is kept."""

import shutil

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.build.select import CANDIDATES, select_graph
from edgetx.passes.ort_fusions import OrtFusions
from edgetx.passes import GraphPass, PassResult


class BreakWeights(GraphPass):
    """A 'fusion' that silently corrupts the graph: it must never be kept, however fast."""

    name = "broken"

    def call(self, model) -> PassResult:
        value = max(model.graph.initializers.values(), key=lambda v: v.const_value.size)
        array = value.const_value.numpy()
        noise = np.random.default_rng(0).standard_normal(array.shape).astype(array.dtype)
        value.const_value = ir.Tensor(array + 0.1 * array.std() * noise, name=value.name)
        return self.done(model)


def _select(bundle_path, tmp_path, candidates, scores):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_path, copy)
    bundle = Bundle.load(copy)

    def write(name, model):
        rel = f"candidates/{name}/model.onnx"
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        ir.save(model, copy / rel)
        return rel

    def timer(session, golden):
        return {"score_ms": scores[session.variant.name]}

    return select_graph(bundle, "fp32/model.onnx", write, candidates=candidates, timer=timer)


def test_failing_candidate_is_never_kept_and_fastest_passing_wins(tiny_bundle_master, tmp_path):
    candidates = {"unfused": [], "ort-fusions": [OrtFusions()], "broken": [BreakWeights()]}
    selection = _select(tiny_bundle_master, tmp_path, candidates, {"unfused": 10.0, "ort-fusions": 5.0, "broken": 1.0})
    by_name = {c["name"]: c for c in selection.candidates}
    assert selection.winner == "ort-fusions"
    assert by_name["broken"]["parity_passed"] is False and not by_name["broken"]["kept"]
    assert by_name["broken"]["failed_checks"] and "score_ms" not in by_name["broken"]


def test_selection_follows_the_measured_time(tiny_bundle_master, tmp_path):
    candidates = {"unfused": [], "ort-fusions": [OrtFusions()]}
    selection = _select(tiny_bundle_master, tmp_path, candidates, {"unfused": 3.0, "ort-fusions": 7.0})
    assert selection.winner == "unfused"  # a fused graph is not assumed faster


def test_build_records_candidates_and_keeps_the_fastest(tiny_bundle_master):
    bundle = Bundle.load(tiny_bundle_master)
    optimization = bundle.manifest["optimization"]
    assert [c["name"] for c in optimization["candidates"]] == list(CANDIDATES)
    passing = [c for c in optimization["candidates"] if c["parity_passed"]]
    winner = min(passing, key=lambda c: c["score_ms"])
    assert optimization["winner"] == winner["name"] and winner["kept"]
    assert all("prefill_ms" in c and "decode_ms" in c for c in passing)
    assert not (tiny_bundle_master / "candidates").exists()
    assert set(bundle.manifest["files"]) == {"fp32/model.onnx", "golden.npz", "quant.npz", "int8-weight-only-a8/model.onnx",
                                             "int4/model.onnx"}
    fused = next(c for c in optimization["candidates"] if c["name"] == "ort-fusions")
    assert fused["log"][0]["fusions"].get("skip_layer_normalization", 0) >= 2


def test_optimize_cli_reports_fusions(tiny_bundle_master, tmp_path):
    out = tmp_path / "fused.onnx"
    result = CliRunner().invoke(main, ["optimize", str(tiny_bundle_master / "fp32/model.onnx"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "nodes" in result.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    result = CliRunner().invoke(main, ["optimize", str(bad), "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "not a readable ONNX model" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_reference_gpt_fuses_attention_rotary_and_norms(reference_bundle):
    bundle = reference_bundle
    fused = next(c for c in bundle.manifest["optimization"]["candidates"] if c["name"] == "ort-fusions")
    ops = fused["log"][0]["ops_after"]
    assert ops["com.microsoft.MultiHeadAttention"] == 6 and ops["com.microsoft.RotaryEmbedding"] == 12
    assert ops["com.microsoft.SkipLayerNormalization"] == 12
    assert bundle.variant("fp32").parity["passed"]
