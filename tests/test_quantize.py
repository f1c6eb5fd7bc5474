"""Quantized variants: gated, with mixed precision when a scheme misses, and clear errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.errors import InputError
from edgetx.kinds import get_kind
from edgetx.quant.schemes import SCHEMES
from edgetx.quant.apply import apply, small_constant_matmuls, weight_matmuls


def _bundle_data(path):
    bundle = Bundle.load(path)
    return bundle, dict(np.load(bundle.file("quant.npz"))), bundle.io["inputs"]


def test_build_writes_gated_int8_and_int4(tiny_bundle_master):
    bundle = Bundle.load(tiny_bundle_master)
    assert {"fp32", "int8-weight-only-a8", "int4"} <= set(bundle.variants)
    results = bundle.manifest["quantization"]["results"]
    for name in ("int8-weight-only-a8", "int4"):
        assert results[name]["gate_passed"] and not results[name]["missed_by"]
        assert results[name]["bytes"] < bundle.manifest["variants"]["fp32"]["bytes"]
        assert bundle.variant(name).parity["passed"]
        assert {"kld_mean", "top1", "bits_per_token", "greedy_agreement"} <= set(results[name]["gate"])
    assert "quant.npz" in bundle.manifest["files"]


def test_rotary_frequency_matmul_is_never_quantized(tiny_bundle_master):
    fp32 = Bundle.load(tiny_bundle_master).file("fp32/model.onnx")
    small = small_constant_matmuls(fp32)
    assert small and not set(small) & set(weight_matmuls(fp32))


def test_static_quantization_needs_calibration(tiny_bundle_master, tmp_path):
    bundle, data, inputs = _bundle_data(tiny_bundle_master)
    fp32 = bundle.file("fp32/model.onnx")
    static = SCHEMES["int8-static-minmax"]
    with pytest.raises(InputError, match="needs calibration data and none was given"):
        apply(static, fp32, tmp_path / "s.onnx", calibration=[], inputs=inputs)
    wrong = get_kind("causal-lm").calibration_feeds(inputs, data)
    wrong[0]["input_ids"] = wrong[0]["input_ids"].astype(np.int32)
    with pytest.raises(InputError, match="calibration sample 0: input 'input_ids': expected dtype int64"):
        apply(static, fp32, tmp_path / "s.onnx", calibration=wrong, inputs=inputs)
    apply(static, fp32, tmp_path / "s.onnx", calibration=get_kind("causal-lm").calibration_feeds(inputs, data), inputs=inputs)
    assert (tmp_path / "s.onnx").stat().st_size < fp32.stat().st_size


def test_quantize_cli(tiny_bundle_master, tmp_path):
    src = tiny_bundle_master / "fp32/model.onnx"
    result = CliRunner().invoke(main, ["quantize", str(src), "--scheme", "int4", "-o", str(tmp_path / "q.onnx")])
    assert result.exit_code == 0 and (tmp_path / "q.onnx").is_file()
    result = CliRunner().invoke(main, ["quantize", str(src), "--scheme", "int3", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "unknown quantization scheme 'int3'" in result.stderr
    result = CliRunner().invoke(main, ["quantize", str(src), "--scheme", "int8-static-minmax", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "needs calibration data" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_build_rejects_unknown_scheme_before_exporting(tmp_path):
    result = CliRunner().invoke(main, ["build", "--out", str(tmp_path / "b"), "--quantize", "int8,int3"])
    assert result.exit_code == 1 and "unknown quantization scheme 'int3'" in result.stderr


def test_inspect_shows_the_quantization_report(tiny_bundle_master):
    result = CliRunner().invoke(main, ["inspect", str(tiny_bundle_master)])
    assert "quantized variants" in result.stderr and "int4" in result.stderr
    info = json.loads(CliRunner().invoke(main, ["inspect", str(tiny_bundle_master), "--json"]).stdout)
    assert set(info["quantization"]["results"]) == {"int8-weight-only-a8", "int4", "int4-grid", "int4-grid-a8"}


def test_static_and_fp16_schemes_through_build(tiny_checkpoint, tmp_path):
    from edgetx.build import build

    bundle = build(tiny_checkpoint, tmp_path / "b", optimize=False, quantize=("int8-static-entropy", "fp16"))
    results = bundle.manifest["quantization"]["results"]
    assert results["int8-static-entropy"]["scheme"]["method"] == "static"
    for name in ("int8-static-entropy", "fp16"):
        assert results[name]["gate_passed"], results[name]["missed_by"]
        assert name in bundle.variants and bundle.variant(name).parity["passed"]
    assert bundle.variant("fp16").precision == "fp16"


def _snap_to_q4_1_grid(src, dst):
    """A copy of `src` whose weight matrices sit on a GGUF Q4_1-style grid: per block of 32 inputs,
    low + step * q with q in 0..15 (levels 0 and 15 not always used)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for i, tensor in enumerate(model.graph.initializer):
        w = numpy_helper.to_array(tensor)
        if w.ndim != 2 or w.size < 4096 or w.shape[0] % 32:
            continue
        blocks = w.T.reshape(w.shape[1], -1, 32)
        low, high = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
        step = (high - low) / 15
        q = np.clip(np.rint((blocks - low) / step), 1, 14)  # like a real file, the extremes may go unused
        snapped = (low + step * q).astype(np.float32).reshape(w.shape[1], -1).T
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(snapped), tensor.name))
    onnx.save(model, str(dst))


def test_int4_grid_is_exact_on_grid_weights(tiny_bundle_master, tmp_path):
    from edgetx.bundle import Bundle
    from edgetx.quant.grid import apply_grid
    from edgetx.verify.parity import golden_feeds
    from edgetx.quant.schemes import NotApplicable, SCHEMES
    from edgetx.quant.apply import apply
    from edgetx.runtimes import SessionOptions, get_backend
    from edgetx.runtimes.session import Session

    bundle = Bundle.load(tiny_bundle_master)
    fp32 = bundle.file("fp32/model.onnx")
    with pytest.raises(NotApplicable, match="no weight MatMul .* sits on a 4-bit block grid"):
        apply(SCHEMES["int4-grid"], fp32, tmp_path / "float.onnx")  # float-trained weights: nothing to do
    snapped, exact = tmp_path / "snapped.onnx", tmp_path / "int4.onnx"
    _snap_to_q4_1_grid(fp32, snapped)
    assert apply_grid(snapped, exact) == len(weight_matmuls(snapped))  # every snapped weight MatMul
    feeds = golden_feeds(Session(bundle), bundle.golden())
    cpu = get_backend("ort-cpu")
    want = cpu.create_session(snapped, SessionOptions()).run(feeds, ["logits"]).outputs["logits"]
    got = cpu.create_session(exact, SessionOptions()).run(feeds, ["logits"]).outputs["logits"]
    assert np.abs(want - got).max() < 1e-4 * np.abs(want).max()  # exact up to fp32 summation order
    assert exact.stat().st_size < snapped.stat().st_size  # (embeddings and norms stay fp32 in this tiny model)


def test_build_records_int4_grid_as_not_applicable(tiny_bundle_master):
    from edgetx.bundle import Bundle

    results = Bundle.load(tiny_bundle_master).manifest["quantization"]["results"]
    assert "4-bit block grid" in results["int4-grid"]["not_applicable"]
    assert "int4-grid" not in Bundle.load(tiny_bundle_master).variants
    assert not (tiny_bundle_master / "int4-grid").exists()  # no empty folder left behind


def _grid_graph(path, rng):
    """x -> three MatMuls on a Q4_1-style grid that share x (like q/k/v), and a head on a Q8_0 grid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def q4_1(k, n):
        step, low = rng.uniform(0.01, 0.02, (n, k // 32, 1)), rng.uniform(-0.2, -0.1, (n, k // 32, 1))
        return (low + step * rng.integers(0, 16, (n, k // 32, 32))).astype(np.float32).reshape(n, k).T

    def q8_0(k, n):
        q = rng.integers(-127, 128, (n, k // 32, 32))
        q[..., 0] = 127  # the block maximum defines the scale, as in GGUF
        return (rng.uniform(1e-3, 2e-3, (n, k // 32, 1)) * q).astype(np.float32).reshape(n, k).T

    weights = {"wq": q4_1(128, 128), "wk": q4_1(128, 64), "wv": q4_1(128, 64), "head": q8_0(128, 256)}
    nodes = [helper.make_node("MatMul", ["x", w], [f"y_{w}"], name=f"mm_{w}") for w in ("wq", "wk", "wv")]
    nodes.append(helper.make_node("MatMul", ["y_wq", "head"], ["logits"], name="mm_head"))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("y_wk", "y_wv", "logits")]
    graph = helper.make_graph(nodes, "grid", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 128])],
                              outputs, [numpy_helper.from_array(w, name) for name, w in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_int4_grid_packs_shared_inputs_and_a8_takes_a_q8_0_head(tmp_path):
    import onnx
    from onnx import helper

    from edgetx.quant.grid import apply_grid
    from edgetx.runtimes import SessionOptions, get_backend

    rng = np.random.default_rng(0)
    src = tmp_path / "grid.onnx"
    _grid_graph(src, rng)
    x = {"x": rng.standard_normal((1, 3, 128)).astype(np.float32)}
    cpu = get_backend("ort-cpu")
    want = cpu.create_session(src, SessionOptions()).run(x).outputs
    for level, converted, head_bits in ((0, 3, None), (4, 4, 8)):
        out = tmp_path / f"level{level}.onnx"
        assert apply_grid(src, out, accuracy_level=level) == converted
        model = onnx.load(str(out))
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in nbits]
        packed = [a for a in attrs if a["bits"] == 4]
        assert len(packed) == 1 and packed[0]["N"] == 128 + 64 + 64  # q, k, v: one kernel call, then a Split
        assert [a["bits"] for a in attrs if a["bits"] == 8] == ([head_bits] if head_bits else [])
        assert all(a["accuracy_level"] == level for a in attrs)
        got = cpu.create_session(out, SessionOptions()).run(x).outputs
        for name in want:
            err = np.abs(want[name] - got[name]).max() / np.abs(want[name]).max()
            assert err < (1e-5 if level == 0 else 3e-2), (level, name, err)  # exact weights; a8 rounds activations


def _tiny_fused_encoder(path, hidden=64, heads=4, ffn=256, vocab=50, outlier=5):
    """An encoder graph shaped like onnxruntime's fusion of a BERT export (what `edgetx build` keeps for
    MiniLM): a packed Attention (its weight a Concat of the Q/K/V initializers, qkv_hidden_sizes, an
    additive attention_bias), SkipLayerNormalization, BiasGelu; one channel of the first LayerNorm's
    output 25x the others (an activation outlier channel, as in real transformer hidden states)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    gamma = np.ones(hidden, np.float32)
    gamma[outlier] = 25.0
    inits = {"emb": w(vocab, hidden, scale=1.0), "ln0.g": np.ones(hidden, np.float32), "ln0.b": np.zeros(hidden, np.float32),
             "wq": w(hidden, hidden), "wk": w(hidden, hidden), "wv": w(hidden, hidden), "bq": w(hidden), "bk": w(hidden),
             "bv": w(hidden), "wo": w(hidden, hidden), "bo": w(hidden), "ln1.g": gamma, "ln1.b": w(hidden),
             "w1": w(hidden, ffn), "b1": w(ffn), "w2": w(ffn, hidden), "b2": w(hidden), "ln2.g": np.ones(hidden, np.float32),
             "ln2.b": w(hidden), "one": np.array(1.0, np.float32), "neg": np.array(-10000.0, np.float32),
             "zero": np.array(0.0, np.float32), "row": np.array([1, 2], np.int64), "col": np.array([1, 3], np.int64)}
    ms = "com.microsoft"
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
        helper.make_node("LayerNormalization", ["e", "ln0.g", "ln0.b"], ["h0"], axis=-1, epsilon=1e-12),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "m"], ["pad"]),
        helper.make_node("Mul", ["pad", "neg"], ["masked"]),
        helper.make_node("Unsqueeze", ["masked", "row"], ["bias_row"]),  # (batch, 1, 1, seq)
        helper.make_node("Mul", ["m", "zero"], ["zeros"]),
        helper.make_node("Unsqueeze", ["zeros", "col"], ["zero_col"]),  # (batch, 1, seq, 1)
        helper.make_node("Add", ["bias_row", "zero_col"], ["attn_bias"]),  # (batch, 1, seq, seq)
        helper.make_node("Concat", ["wq", "wk", "wv"], ["wqkv"], axis=1),
        helper.make_node("Concat", ["bq", "bk", "bv"], ["bqkv"], axis=0),
        helper.make_node("Attention", ["h0", "wqkv", "bqkv", "", "", "attn_bias"], ["a"], name="attention", domain=ms,
                         num_heads=heads, qkv_hidden_sizes=[hidden] * 3, unidirectional=0),  # as ORT saves it
        helper.make_node("MatMul", ["a", "wo"], ["ao"], name="out_proj"),
        helper.make_node("SkipLayerNormalization", ["ao", "h0", "ln1.g", "ln1.b", "bo"], ["h1", "mean", "inv_std", "sum"],
                         name="sln1", domain=ms, epsilon=1e-12),
        helper.make_node("MatMul", ["h1", "w1"], ["f1"], name="ffn_up"),
        helper.make_node("BiasGelu", ["f1", "b1"], ["g"], name="gelu", domain=ms),
        helper.make_node("MatMul", ["g", "w2"], ["f2"], name="ffn_down"),
        helper.make_node("SkipLayerNormalization", ["f2", "h1", "ln2.g", "ln2.b", "b2"], ["last_hidden_state"],
                         name="sln2", domain=ms, epsilon=1e-12),
    ]
    graph = helper.make_graph(nodes, "tiny-encoder",
                              [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
                               for n in ("input_ids", "attention_mask")],
                              [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ms, 1)]), str(path))
    return path


def _encoder_batch(seed, batch=16, seq=12):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    for i, length in enumerate(rng.integers(4, seq + 1, batch)):
        mask[i, length:] = 0  # padded rows, as the bundle's held-out text is
    return {"input_ids": rng.integers(0, 50, (batch, seq)).astype(np.int64), "attention_mask": mask}


def _run(path, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_int8_is_signed_7bit_dynamic_on_the_rewritten_graph(tmp_path):
    """`int8`: the fused Attention's Q/K/V projection and every other weight MatMul run as u8s8
    MatMulInteger with signed weights in [-64, 64] per output channel (reduce_range: no int16
    saturation on AVX2-only CPUs); the rewrites alone change nothing but fp32 rounding."""
    import onnx
    from onnx import numpy_helper

    from edgetx.quant.apply import prepare_int8_graph

    src, feeds = _tiny_fused_encoder(tmp_path / "fp32.onnx"), _encoder_batch(1)
    s = SCHEMES["int8"]
    assert {"weight_type": "QInt8", "reduce_range": True, "per_channel": True}.items() <= s.to_dict()["options"].items()
    prepared, record = prepare_int8_graph(s, src, tmp_path / "prepared.onnx")
    assert record == {"attention_unpacked": 1, "skip_layer_norm_split": 2}
    want, got = _run(src, feeds), _run(prepared, feeds)
    assert np.abs(want - got).max() < 1e-4 * np.abs(want).max()
    assert prepare_int8_graph(s, prepared, tmp_path / "again.onnx") == (prepared, None)  # not rewritten twice

    apply(s, src, tmp_path / "int8.onnx")
    model = onnx.load(str(tmp_path / "int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "Attention" not in ops and "SkipLayerNormalization" not in ops and "MultiHeadAttention" in ops
    assert "Max" in ops  # the attention bias floored (no denormal probabilities on padded input)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = [inits[n.input[1]] for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert len(weights) == 4  # Q/K/V, attention output, FFN up, FFN down
    for q in weights:
        assert q.dtype == np.int8 and (np.abs(q.astype(np.int32)).max(axis=0) == 64).all()
    quantized = _run(tmp_path / "int8.onnx", feeds)
    cosine = (want * quantized).sum(-1) / np.linalg.norm(want, axis=-1) / np.linalg.norm(quantized, axis=-1)
    assert cosine.min() > 0.98
    # what onnxruntime runs after its own load-time fusions: the int8 kernels, and not the slow
    # SkipLayerNormalization fused back (it is, if the bias Add comes before the skip Add)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath, so.log_severity_level = str(tmp_path / "loaded.onnx"), 3
    ort.InferenceSession(str(tmp_path / "int8.onnx"), so, providers=["CPUExecutionProvider"])
    loaded = {n.op_type for n in onnx.load(str(tmp_path / "loaded.onnx")).graph.node}
    assert "DynamicQuantizeMatMul" in loaded and "SkipLayerNormalization" not in loaded


def test_int8_outliers_is_calibrated_and_gated(tmp_path, monkeypatch):
    """`int8-outliers` needs the bundle's calibration text, treats the outlier channel, passes the int8
    gate against fp32, and like every scheme writes nothing when the gate cannot be met."""
    import dataclasses

    import onnx

    from edgetx.quant import gates
    from edgetx.quant.gates import quantize_gated
    from edgetx.quant.apply import quantize_file

    src = _tiny_fused_encoder(tmp_path / "fp32.onnx")
    with pytest.raises(InputError, match="needs calibration data"):
        quantize_file("int8-outliers", src, tmp_path / "x.onnx")
    inputs = [{"name": n, "dtype": "int64", "shape": ["batch", "seq"]} for n in ("input_ids", "attention_mask")]
    data = {f"{split}.{k}": v for split, seed in (("calib", 2), ("eval", 3)) for k, v in _encoder_batch(seed).items()}
    pooling = {"mode": "mean", "normalize": True}
    out = tmp_path / "int8-outliers.onnx"
    variant = quantize_gated(SCHEMES["int8-outliers"], src, out, "encoder", inputs, data, {"pooling": pooling})
    assert variant.passed and out.is_file() and variant.metrics["cosine_mean"] >= 0.995, variant.missed_by
    rewrites = variant.to_dict()["graph_rewrites"]
    assert "ffn_up" in rewrites["decomposed"] + rewrites["smoothed"]  # the MatMul fed the outlier channel
    ops = {n.name: n.op_type for n in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops.values() and all(ops[n] == "MatMul" for n in ops if n.endswith("/outlier_MatMul"))

    impossible = dataclasses.replace(gates.QUANTIZED["int8"], min_cosine_mean=1.01)
    monkeypatch.setitem(gates.QUANTIZED, "int8", impossible)
    missed = quantize_gated(SCHEMES["int8-outliers"], src, tmp_path / "missed.onnx", "encoder", inputs, data, {"pooling": pooling})
    assert not missed.passed and missed.missed_by and not (tmp_path / "missed.onnx").exists()
    assert len(missed.steps) > 1  # the mixed-precision search ran


def test_reference_outputs_answer_each_question_once_and_release_the_session():
    """The gate's fp32 answers are computed once: later trials reuse them without an fp32 session open."""
    from types import SimpleNamespace

    from edgetx.quant.gates import ReferenceOutputs, runner

    runs, closed = [], []

    class FakeSession:
        def run(self, feeds, names=None):
            runs.append(int(feeds["x"].sum()))
            return SimpleNamespace(outputs={"y": feeds["x"] * 2})

        def close(self):
            closed.append(True)

    reference = ReferenceOutputs(FakeSession)
    run = runner(reference)
    a, b = {"x": np.arange(4)}, {"x": np.arange(5)}
    assert run(a)["y"].tolist() == [0, 2, 4, 6] and run(b)["y"].sum() == 20
    reference.release()
    assert closed == [True]
    assert run(a)["y"].tolist() == [0, 2, 4, 6] and runs == [6, 10] and reference.sessions_opened == 1
    assert run({"x": np.arange(4).astype(np.float32)})["y"].dtype == np.float32  # another dtype: a new question
    assert reference.sessions_opened == 2 and runs == [6, 10, 6]


@pytest.mark.parametrize("name", ["int8-weight-only", "int4", "int8", "int8-per-tensor", "fp16"])
def test_sensitivity_in_column_chunks_matches_the_whole_weight(name, monkeypatch):
    from edgetx.quant import sensitivity

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((24, 64), np.float32), rng.standard_normal((64, 300), np.float32)
    whole = sensitivity.relative_error(SCHEMES[name], x, w)
    monkeypatch.setattr(sensitivity, "COLUMN_CHUNK", 64)
    assert whole > 0 and sensitivity.relative_error(SCHEMES[name], x, w) == pytest.approx(whole, rel=1e-5)
