"""`edgetx bench`: decoder and encoder timings, stored in the manifest, torch-free."""

import json

from click.testing import CliRunner

from conftest import run_python
from edgetx.bundle import Bundle
from edgetx.cli import main


def test_decoder_bench_json_and_manifest(tiny_bundle):
    result = CliRunner().invoke(main, ["bench", str(tiny_bundle), "-p", "16", "-n", "8", "--threads", "1,2",
                                       "--variant", "fp32", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        assert r["time_to_first_token_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0
        lat = r["decode_token_latency"]
        assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] and r["repeats"] == 2 and r["file_mb"] > 0
    stored = Bundle.load(tiny_bundle).manifest["bench"]  # still loads: the files' hashes are untouched
    assert set(stored) == {"fp32@ort-cpu@threads=1", "fp32@ort-cpu@threads=2"}


def test_bench_table_and_limits(tiny_bundle):
    result = CliRunner().invoke(main, ["bench", str(tiny_bundle), "-p", "16", "-n", "4", "--repeats", "1", "--no-save"])
    assert result.exit_code == 0 and "decoder bench" in result.stderr and "int4" in result.stderr
    assert "bench" not in Bundle.load(tiny_bundle).manifest
    result = CliRunner().invoke(main, ["bench", str(tiny_bundle), "-p", "250", "-n", "64"])
    assert result.exit_code == 1 and "exceeds this model's 256 positions" in result.stderr
    result = CliRunner().invoke(main, ["bench", str(tiny_bundle), "--threads", "one"])
    assert result.exit_code == 1 and "comma-separated integers" in result.stderr


def test_encoder_bench(tmp_path):
    from edgetx.build import build
    from hf_models import save_tiny

    bundle = build(save_tiny("bert", tmp_path / "bert"), tmp_path / "b", optimize=False, quantize=())
    result = CliRunner().invoke(main, ["bench", str(bundle.path), "--batch-sizes", "1,4", "--seq-lens", "16,32",
                                       "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert [(b["batch"], b["seq"]) for b in row["batches"]] == [(1, 16), (1, 32), (4, 16), (4, 32)]
    assert all(b["sequences_per_s"] > 0 for b in row["batches"])


def test_bench_runs_without_torch(tiny_bundle):
    code = ("import sys; sys.modules['torch'] = None\nfrom edgetx.cli import main\n"
            f"main(['bench', {str(tiny_bundle)!r}, '-p', '8', '-n', '4', '--repeats', '1', '--json'])")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 3  # fp32, int8-weight-only-a8, int4
