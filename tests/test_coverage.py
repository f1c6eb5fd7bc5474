"""The coverage sweep (benchmarks/coverage.py): its representative subset must build and pass parity with the
fast recipe on whichever transformers major is installed; the full sweep's table lives in benchmarks/results/.

Cells run in this process (one torch import for all of them); each makes a tiny random-init model of its type
from the config class, saves it with a real tokenizer and builds it (export + golden + parity)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

CELLS = [(model_type, task) for task, types in coverage.SUBSET.items() for model_type in types]


def test_subset_is_representative():
    types = {t for t, _ in CELLS}
    assert len(types) >= 30 and len(CELLS) >= 30
    assert {task for _, task in CELLS} == set(coverage.TASKS)


def test_tiny_config_is_tiny_and_keeps_layer_kinds():
    pytest.importorskip("transformers")
    from transformers import CONFIG_MAPPING

    tokenizer = coverage._tokenizer("bpe")
    config = coverage._shrink(CONFIG_MAPPING["gemma2"], tokenizer, {})
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.head_dim) == (64, 2, 4, 16)
    assert config.vocab_size == len(tokenizer)
    assert sorted(config.layer_types) == ["full_attention", "sliding_attention"]  # both kinds in 2 layers


def test_failure_reasons_group_and_render():
    rows = [{"type": "a", "task": "causal-lm", "build": "failed", "reason": "build: FooForCausalLM has 3 heads"},
            {"type": "b", "task": "causal-lm", "build": "failed", "reason": "build: BarForCausalLM has 5 heads"},
            {"type": "c", "task": "encoder", "build": "ok", "parity_max_abs": 1e-6, "cosine": 1.0}]
    assert coverage.reason_groups(rows).most_common(1)[0][1] == 2
    table = coverage.render(rows)
    assert len(table) == 2 + len(rows) and "| c | encoder | ok | 1e-06 | 1.000000 |" in table[-1]


def test_report_counts_distinct_types_and_names_resumed_and_missing_cells(tmp_path, monkeypatch):
    import datetime as dt

    monkeypatch.setattr(coverage, "RESULTS", tmp_path)
    earlier = {"date": "2026-01-01T00:00:00+00:00", "commit": "abc1234"}
    rows = [{"type": "bert", "task": "encoder", "build": "ok", "run": earlier},
            {"type": "bert", "task": "seq-cls", "build": "ok", "run": earlier},
            {"type": "gpt2", "task": "causal-lm", "build": "failed", "reason": "build: no", "run": earlier}]
    path = coverage.write_report(rows, "fast", "python benchmarks/coverage.py --report-only",
                                 dt.datetime.now(dt.timezone.utc), stem="t", missing=[("albert", "encoder")])
    text = path.read_text()
    assert "**1 distinct model types pass**" in text and "2 of 3 cells pass" in text
    assert "Assembled from resumed cells: 3 of 3 cells" in text and "3 on 2026-01-01 at abc1234" in text
    assert "Not run: 1 registry cells" in text and "encoder: albert" in text


@pytest.mark.slow
@pytest.mark.parametrize("model_type,task", CELLS, ids=[f"{t}-{task}" for t, task in CELLS])
def test_subset_cell_builds_and_passes_parity(model_type, task, tmp_path):
    pytest.importorskip("transformers")
    if (model_type, task) not in coverage.cells([task], [model_type]):
        pytest.skip(f"{model_type} is not in this transformers' {coverage.REGISTRY[task]}")
    result = coverage.run_cell(model_type, task, "fast", tmp_path)
    assert result["build"] == "ok", result["reason"]
    assert all(result["checks"].values()), result["checks"]
