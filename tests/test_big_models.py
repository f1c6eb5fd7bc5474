"""A decoder over 2 GB of fp32 weights, end to end: export with external data, optimization candidates and a
quantized variant each self-contained in its own folder, a bundle that still verifies when copied elsewhere,
and the build's peak memory and time recorded against the weight bytes."""

from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from edgetx.build.pipeline import build, peak_rss_bytes  # noqa: E402
from edgetx.bundle import Bundle  # noqa: E402
from edgetx.verify.parity import verify  # noqa: E402

# Qwen2-0.5B's width, vocabulary and heads with untied embeddings and fewer, wider layers: 586M parameters,
# 2.35 GB of fp32 weights (over protobuf's 2 GiB), and a graph small enough to export in about a minute
SHAPE = dict(hidden_size=1024, intermediate_size=8192, num_hidden_layers=10, num_attention_heads=16,
             num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096, tie_word_embeddings=False)
PROTOBUF_LIMIT = 2**31


def save_big_decoder(folder: Path, **shape) -> int:
    """A random-init Qwen2 of `shape` with a byte-level tokenizer at `folder`; returns its fp32 weight bytes."""
    import torch
    import transformers as tf

    from hf_models import byte_level_tokenizer

    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    config = tf.Qwen2Config(**shape, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    config.architectures = ["Qwen2ForCausalLM"]
    with torch.no_grad():
        model = tf.Qwen2ForCausalLM(config)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    del model
    gc.collect()
    return nbytes


def _external_locations(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


@pytest.mark.slow
def test_decoder_over_2gb_builds_quantizes_and_verifies_when_moved(tmp_path):
    started = time.perf_counter()
    source = save_big_decoder(tmp_path / "hf", **SHAPE)
    assert source > PROTOBUF_LIMIT
    bundle = build(tmp_path / "hf", tmp_path / "bundle", candidates=("unfused", "ort-fusions"),
                   quantize=("int8-weight-only",))
    manifest = bundle.manifest
    files = manifest["files"]
    assert "fp32/model.onnx.data" in files and files["fp32/model.onnx.data"]["bytes"] > PROTOBUF_LIMIT
    assert _external_locations(bundle.file("fp32/model.onnx")) == {"model.onnx.data"}
    assert not any(rel.startswith("candidates/") for rel in files)
    tried = {c["name"]: c for c in manifest["optimization"]["candidates"]}
    assert all(c.get("parity_passed") for c in tried.values()), tried  # each candidate loaded under ORT's checks
    assert "int8-weight-only" in manifest["variants"], manifest["quantization"]
    quantized = bundle.file(manifest["variants"]["int8-weight-only"]["file"])
    assert _external_locations(quantized) <= {"model.onnx.data"}
    record = manifest["provenance"]["build"]
    assert record["fp32_weight_bytes"] > PROTOBUF_LIMIT and record["peak_rss_bytes"] > 0
    assert record["peak_rss_vs_fp32_weights"] <= 3.0, record

    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(bundle.path, moved)
    shutil.rmtree(bundle.path)  # nothing may still point at the folder it was built in
    copy = Bundle.load(moved)  # hashes every file (the data files too) and checks each external-data path
    reports = verify(copy)
    assert reports and all(r.passed for r in reports), [r.to_dict() for r in reports]
    summary = {"test_seconds": round(time.perf_counter() - started, 1), "peak_rss_bytes": peak_rss_bytes(),
               "fp32_weight_bytes": source, "build": record}
    print(json.dumps(summary))
