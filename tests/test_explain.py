"""`--explain`: a known error injected into one block is found there, whichever two sides."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from edgetx.build import build
from edgetx.bundle import Bundle, sha256_file
from edgetx.cli import main
from edgetx.errors import EdgetxError
from edgetx.verify.explain import explain, explain_bundle, module_path
from edgetx.models.model import GPT, GPTConfig
from edgetx.verify.parity import golden_feeds
from edgetx.runtimes import Session

BLOCK = 1  # the block that gets the error, in a 3-block model
TARGET = f"h.{BLOCK}.mlp.c_fc"


@pytest.fixture(scope="module")
def three_block_bundle(tmp_path_factory):
    from safetensors.torch import save_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    model = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=256))
    model.config.save(folder / "config.json")
    save_model(model, str(folder / "model.safetensors"))
    # Unfused: comparing with PyTorch module by module needs the graph as exported.
    return build(folder, tmp_path_factory.mktemp("b") / "bundle", optimize=False), folder


def _matmul_of(model, module: str):
    return next(n for n in model.graph.node if n.op_type == "MatMul" and module_path(n) == module)


def _perturbed_copy(src, dst, module: str = TARGET):
    """A copy of the graph with one MatMul's weight perturbed by ~5%."""
    model = onnx.load(str(src))
    node = _matmul_of(model, module)
    init = next(i for i in model.graph.initializer if i.name in node.input)
    weight = numpy_helper.to_array(init)
    noise = np.random.default_rng(0).standard_normal(weight.shape).astype(weight.dtype)
    init.CopyFrom(numpy_helper.from_array(weight + 0.05 * weight.std() * noise, init.name))
    onnx.save(model, str(dst))
    return node.name


def _feeds(bundle):
    return golden_feeds(Session(bundle), bundle.golden())


def test_perturbed_weight_is_found_in_its_block_fp32_vs_fp32(three_block_bundle, tmp_path):
    bundle, _ = three_block_bundle
    fp32 = bundle.file("fp32/model.onnx")
    node_name = _perturbed_copy(fp32, tmp_path / "broken.onnx")
    report = explain(fp32, tmp_path / "broken.onnx", _feeds(bundle))
    assert report.diverged
    assert report.first.group == f"block {BLOCK}"
    assert report.first.node == node_name and report.first.op_type == "MatMul"
    assert report.first.module == TARGET
    before = [g for g in report.groups if g["group"] in ("embeddings", "block 0")]
    assert before and all(g["first_over"] is None and g["worst_rel"] < 1e-6 for g in before)


def test_quantized_block_is_found_where_quantization_starts(three_block_bundle, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    bundle, _ = three_block_bundle
    fp32 = bundle.file("fp32/model.onnx")
    node = _matmul_of(onnx.load(str(fp32)), TARGET)
    quantize_dynamic(str(fp32), str(tmp_path / "int8.onnx"), weight_type=QuantType.QInt8,
                     nodes_to_quantize=[node.name], extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    report = explain(fp32, tmp_path / "int8.onnx", _feeds(bundle))
    assert report.first.group == f"block {BLOCK}" and report.first.module == TARGET
    assert report.first.node == node.name
    assert report.first.other_node and report.first.other_node != node.name  # the quantized op on side B


def test_pytorch_vs_onnx_finds_the_module_that_differs(three_block_bundle):
    from edgetx.exporters.explain_torch import explain_torch
    from edgetx.exporters.source import load_source

    bundle, folder = three_block_bundle
    source = load_source(folder)
    feeds = _feeds(bundle)
    fp32 = bundle.file("fp32/model.onnx")
    clean = explain_torch(source.module, lambda: source.run_torch(feeds), fp32, feeds)
    assert not clean.diverged and clean.compared >= 3 * 8
    with torch.no_grad():
        source.module.get_submodule(TARGET).weight.mul_(1.05)
    report = explain_torch(source.module, lambda: source.run_torch(feeds), fp32, feeds)
    assert report.first.group == f"block {BLOCK}" and report.first.module == TARGET


def test_cli_explains_a_failing_variant(three_block_bundle, tmp_path):
    bundle, _ = three_block_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    (copy / "broken").mkdir()
    node_name = _perturbed_copy(copy / "fp32/model.onnx", copy / "broken/model.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = {"sha256": sha256_file(copy / "broken/model.onnx"), "bytes": (copy / "broken/model.onnx").stat().st_size}
    manifest["files"]["broken/model.onnx"] = entry
    manifest["variants"]["broken"] = {"precision": "fp32", "file": "broken/model.onnx", **entry,
                                      "tolerance": manifest["variants"]["fp32"]["tolerance"]}
    (copy / "manifest.json").write_text(json.dumps(manifest))

    result = CliRunner().invoke(main, ["verify", str(copy)])
    assert result.exit_code == 1 and "FAIL" in result.stderr
    result = CliRunner().invoke(main, ["verify", str(copy), "--explain", "--variant", "broken", "--json"])
    assert result.exit_code == 1
    first = json.loads(result.stdout)["first_divergence"]
    assert first["group"] == f"block {BLOCK}" and first["node"] == node_name and first["module"] == TARGET
    result = CliRunner().invoke(main, ["verify", str(copy), "--explain", "--variant", "broken"])
    assert f"first divergence in block {BLOCK}, module {TARGET}: MatMul {node_name}" in result.stderr


def test_explain_bundle_defaults_to_pytorch_for_fp32(three_block_bundle):
    bundle, _ = three_block_bundle
    report = explain_bundle(Bundle.load(bundle.path))
    assert report.side_a == "PyTorch" and not report.diverged


def test_fused_bundle_refuses_pytorch_comparison_with_a_reason(tiny_bundle):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["optimization"]["winner"] = "ort-fusions"  # as when the fused graph was the fastest
    (tiny_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgetxError, match="Rebuild with --no-optimize"):
        explain_bundle(Bundle.load(tiny_bundle), "fp32", against="pytorch")


def test_verify_all_prints_the_matrix(three_block_bundle):
    bundle, _ = three_block_bundle
    result = CliRunner().invoke(main, ["verify", str(bundle.path), "--all"])
    assert result.exit_code == 0 and "variant x backend" in result.stderr and "ort-cpu" in result.stderr


def test_measured_tolerance_is_recorded(three_block_bundle):
    bundle, _ = three_block_bundle
    tolerance = bundle.manifest["variants"]["fp32"]["tolerance"]
    assert tolerance["measured_spread"] is not None
    assert tolerance["max_abs"] == max(10 * tolerance["measured_spread"], 1e-5)
    assert "optimization" not in bundle.manifest  # built with optimize=False
    assert "1 thread, 2 threads, no graph optimizations" in tolerance["method"]
    assert bundle.variant("fp32").parity["tolerance"] == tolerance
