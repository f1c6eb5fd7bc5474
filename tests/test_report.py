"""`edgetx report` and the memory-bandwidth bound: well-formed results on a tiny model, not timings."""

import json

import pytest
from click.testing import CliRunner

from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.measure.report import Point, mark_pareto
from edgetx.measure.roofline import measure_read_bandwidth, weight_bytes_per_token


def _point(name: str, accuracy: float, latency: float) -> Point:
    return Point(name, "fp32", 1.0, accuracy, latency, "passed", {})


def test_pareto_front_lower_and_higher_is_better():
    points = [_point("ref", 1.00, 10.0), _point("fast", 1.20, 2.0), _point("dominated", 1.30, 12.0),
              _point("tie", 1.00, 10.0)]
    mark_pareto(points, higher_is_better=False)
    assert [p.variant for p in points if p.pareto] == ["ref", "fast", "tie"]  # equal points do not dominate
    points = [_point("ref", 1.0, 10.0), _point("int8", 0.99, 5.0), _point("slow-int8", 0.99, 6.0)]
    mark_pareto(points, higher_is_better=True)
    assert [p.variant for p in points if p.pareto] == ["ref", "int8"]


def test_bench_adds_memory_bound_for_decoders(tiny_bundle):
    result = CliRunner().invoke(main, ["bench", str(tiny_bundle), "-p", "16", "-n", "6", "--threads", "1",
                                       "--repeats", "1", "--json", "--no-save"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    bundle = Bundle.load(tiny_bundle)
    for r in rows:
        bound = r["memory_bound"]
        assert bound["variant"] == r["variant"] and bound["bandwidth_gb_s"] > 0.1
        assert bound["bound_ms"] > 0 and bound["x_bound"] == pytest.approx(bound["decode_ms"] / bound["bound_ms"])
        assert 0 < bound["weight_mb"] * 1e6 <= bundle.file(bundle.variant(r["variant"]).file).stat().st_size
    fp32, int4 = (next(r["memory_bound"]["weight_mb"] for r in rows if r["variant"] == v) for v in ("fp32", "int4"))
    assert int4 < fp32 / 2  # int4 weights are read in a fraction of the bytes


def test_weight_bytes_count_one_embedding_row(tiny_bundle):
    import onnx

    bundle = Bundle.load(tiny_bundle)
    path = bundle.file(bundle.variant("fp32").file)
    all_bytes = sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)
    read = weight_bytes_per_token(path)
    assert 0 < read < all_bytes  # the 256 x 32 embedding table is looked up, not read whole
    assert measure_read_bandwidth(threads=1, repeats=1, nbytes=16 * 1024 * 1024) > 1e8


def test_report_writes_markdown_and_png(tiny_bundle, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["report", str(tiny_bundle), "--no-bench"])
    assert result.exit_code == 1 and "edgetx bench" in result.stderr  # nothing stored yet: says what to run
    result = runner.invoke(main, ["bench", str(tiny_bundle), "-p", "16", "-n", "6", "--threads", "1", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "report"
    result = runner.invoke(main, ["report", str(tiny_bundle), "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text()
    variants = list(Bundle.load(tiny_bundle).variants)
    for name in variants:
        assert f"| {name} |" in text
    assert "held-out bits per token" in text and "Memory-bandwidth bound" in text and "](pareto.png)" in text
    import matplotlib.image

    image = matplotlib.image.imread(out / "pareto.png")
    assert image.shape[0] > 300 and image.shape[1] > 400 and image.std() > 0.01  # a real picture, not blank
    assert not list(out.glob("*.partial"))


def test_report_benches_missing_variants(tiny_bundle):
    result = CliRunner().invoke(main, ["report", str(tiny_bundle)])  # default threads: benchmarks every variant
    assert result.exit_code == 0, result.output
    assert (tiny_bundle / "report.md").is_file() and (tiny_bundle / "pareto.png").is_file()
    stored = Bundle.load(tiny_bundle).manifest["bench"]  # results were stored; the bundle still verifies
    assert {r["variant"] for r in stored.values()} == set(Bundle.load(tiny_bundle).variants)
