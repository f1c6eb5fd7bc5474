"""Graph optimization: composable passes, and per-target selection by measurement.

Passes take an `onnx_ir` model and return a `PassResult` (the model, whether it changed, and
what: fusion counts, op histogram before and after):
- `OrtFusions`: onnxscript's optimizer (constant folding, dead code, shapes) and its onnxruntime
  fusion rewriter (SkipLayerNorm / SkipRMSNorm, RMSNorm, RotaryEmbedding, MultiHeadAttention /
  GroupQueryAttention with the KV cache, BiasGelu / FastGelu);
- `GqaPaddedBatches`: makes the fused GroupQueryAttention correct for left-padded batches;
- `CpuKernelRewrites`: fused encoder ops replaced by what onnxruntime's CPU kernels run faster;
- `OrtOffline`: onnxruntime's own graph optimizer, saved to a file (what a session would do at load).

`select_graph` builds the candidates, checks each against the golden I/O with the fp32
tolerance, times the ones that pass on the target backend, and keeps the fastest. A fused
graph is not assumed faster: on a small model at one thread it can be slower.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetx.errors import EdgetxError

DECODE_TOKENS = 64  # a candidate's score: prefill of the golden prompt + this many decode steps
PADDING_CHECKS = {"padded batch", "padding invariance"}


def _ir():
    try:
        import onnx_ir as ir
    except ImportError:
        raise EdgetxError("graph optimization needs onnx-ir and onnxscript: pip install 'edgetx[export]'") from None
    return ir


def op_histogram(model) -> dict[str, int]:
    """Op type -> count over the main graph (domain-qualified for non-standard ops)."""
    counts = Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                     for node in model.graph)
    return dict(counts.most_common())


@dataclass
class PassResult:
    model: object  # onnx_ir.Model
    modified: bool
    details: dict = field(default_factory=dict)


class OrtFusions:
    """onnxscript's optimizer + onnxruntime fusion rewriter."""

    name = "ort-fusions"

    def __call__(self, model) -> PassResult:
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        before = op_histogram(model)
        model, counts = optimize_for_ort(model)
        fusions = {k: v for k, v in counts.items() if v}
        return PassResult(model, bool(fusions), {"fusions": fusions, "ops_before": before,
                                                 "ops_after": op_histogram(model)})


class GqaPaddedBatches:
    """Make fused GroupQueryAttention right for left-padded batches.

    The fusion rewriter derives GroupQueryAttention's `seqlens_k` from the attention mask and lets
    the kernel rotate q/k at positions counted from each row's start. The kernel reads that as
    right padding, so a left-padded row attends to its pads and is rotated at the wrong positions
    (max |diff| 23 in SmolLM2's logits). Here every row is full length (`seqlens_k` = total - 1),
    the pads are masked by an additive `attention_bias` built once from the mask, and q/k are
    rotated by RotaryEmbedding at the model's own `position_ids`: the same numbers as the unfused
    graph, at the fused kernel's speed.
    """

    name = "gqa-padded-batches"
    MASK_BIAS = -1e4  # added to a padded key's score: finite, so fp16 graphs and all-pad rows stay NaN-free

    def __call__(self, model) -> PassResult:
        import onnx
        from onnx import helper, numpy_helper

        ir = _ir()
        proto = ir.to_proto(model)
        graph = proto.graph
        attention = [n for n in graph.node if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]
        missing = {"attention_mask", "position_ids"} - {i.name for i in graph.input}
        if not attention or missing:
            reason = "no fused GroupQueryAttention" if not attention else f"graph has no input {sorted(missing)}"
            ops = op_histogram(model)
            return PassResult(model, False, {"skipped": reason, "ops_before": ops, "ops_after": ops})
        p = "edgetx_gqa"
        constants = {f"{p}.one": np.array(1, np.int64), f"{p}.one_1d": np.array([1], np.int64),
                     f"{p}.one_f": np.array(1.0, np.float32), f"{p}.mask_bias": np.array(self.MASK_BIAS, np.float32),
                     f"{p}.axes_1_2": np.array([1, 2], np.int64)}
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
        node = helper.make_node
        shared = [
            node("Shape", ["attention_mask"], [f"{p}.batch"], start=0, end=1),
            node("Shape", ["attention_mask"], [f"{p}.total"], start=1, end=2),
            node("Shape", ["position_ids"], [f"{p}.new"], start=1, end=2),
            node("Sub", [f"{p}.total", f"{p}.one"], [f"{p}.last"]),  # seqlens_k: every row full length
            node("Expand", [f"{p}.last", f"{p}.batch"], [f"{p}.last_b"]),
            node("Cast", [f"{p}.last_b"], [f"{p}.seqlens_k"], to=onnx.TensorProto.INT32),
            node("Squeeze", [f"{p}.total"], [f"{p}.total_0d"]),
            node("Cast", [f"{p}.total_0d"], [f"{p}.total_len"], to=onnx.TensorProto.INT32),
            node("Cast", ["attention_mask"], [f"{p}.mask_f"], to=onnx.TensorProto.FLOAT),  # bias = (1 - mask) * -1e4
            node("Sub", [f"{p}.one_f", f"{p}.mask_f"], [f"{p}.pads"]),
            node("Mul", [f"{p}.pads", f"{p}.mask_bias"], [f"{p}.bias_bt"]),
            node("Unsqueeze", [f"{p}.bias_bt", f"{p}.axes_1_2"], [f"{p}.bias_b11t"]),
            node("Concat", [f"{p}.batch", f"{p}.one_1d", f"{p}.new", f"{p}.total"], [f"{p}.bias_shape"], axis=0),
            node("Expand", [f"{p}.bias_b11t", f"{p}.bias_shape"], [f"{p}.attention_bias"]),
        ]
        nodes, rotated = [], 0
        for n in graph.node:
            if n in attention:
                attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
                ins = list(n.input) + [""] * (11 - len(n.input))
                if attrs.get("do_rotary"):
                    for i, heads in ((0, attrs["num_heads"]), (1, attrs["kv_num_heads"])):
                        out = f"{n.name}.rotary{i}"
                        nodes.append(node("RotaryEmbedding", [ins[i], "position_ids", ins[7], ins[8]], [out],
                                          name=out, domain="com.microsoft", num_heads=heads,
                                          interleaved=attrs.get("rotary_interleaved", 0)))
                        ins[i] = out
                    rotated += 1
                ins[5:11] = [f"{p}.seqlens_k", f"{p}.total_len", "", "", "", f"{p}.attention_bias"]
                del n.input[:]
                n.input.extend(ins)
                for a in n.attribute:
                    if a.name == "do_rotary":
                        a.i = 0
            nodes.append(n)
        del graph.node[:]
        graph.node.extend(shared + nodes)
        before = op_histogram(model)
        model = ir.from_proto(proto)
        return PassResult(model, True, {"attention_nodes": len(attention), "rotary_moved_out": rotated,
                                        "ops_before": before, "ops_after": op_histogram(model)})


class CpuKernelRewrites:
    """After the fusions, swap two fused encoder ops for what onnxruntime's CPU kernels run faster
    (edgetx.int8_graph, measured there): Attention -> MatMul + Split + MultiHeadAttention with the
    attention bias floored (no denormal softmax on padded input), and SkipLayerNormalization ->
    Add + LayerNormalization. Exact up to fp32 summation order; the parity check decides."""

    name = "cpu-kernel-rewrites"

    def __call__(self, model) -> PassResult:
        from edgetx.int8_graph import split_skip_layer_norm, unpack_attention

        ir = _ir()
        proto = ir.to_proto(model)
        counts = {"attention_unpacked": unpack_attention(proto), "skip_layer_norm_split": split_skip_layer_norm(proto)}
        if not any(counts.values()):
            ops = op_histogram(model)
            return PassResult(model, False, {**counts, "ops_before": ops, "ops_after": ops})
        rewritten = ir.from_proto(proto)
        return PassResult(rewritten, True, {**counts, "ops_before": op_histogram(model),
                                            "ops_after": op_histogram(rewritten)})


class OrtOffline:
    """onnxruntime's graph optimizer at a level, run once and saved (basic is portable across
    execution providers; extended adds CPU contrib ops)."""

    def __init__(self, level: str = "extended"):
        self.level = level
        self.name = f"ort-offline-{level}"

    def __call__(self, model) -> PassResult:
        import onnxruntime as ort

        ir = _ir()
        levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
        before = op_histogram(model)
        with tempfile.TemporaryDirectory(prefix="edgetx-ort-opt-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            ir.save(model, src)
            options = ort.SessionOptions()
            options.graph_optimization_level = levels[self.level]
            options.optimized_model_filepath = str(dst)
            options.log_severity_level = 3
            ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
            optimized = ir.load(dst)  # a single file: its weights are read into memory here
        return PassResult(optimized, True, {"ops_before": before, "ops_after": op_histogram(optimized)})


CANDIDATES: dict[str, list] = {
    "unfused": [],
    "ort-fusions": [OrtFusions(), GqaPaddedBatches()],
    "ort-offline-extended": [OrtOffline("extended")],
    "ort-fusions+ort-offline-extended": [OrtFusions(), GqaPaddedBatches(), OrtOffline("extended")],
    "ort-fusions+cpu-kernel-rewrites": [OrtFusions(), GqaPaddedBatches(), CpuKernelRewrites()],
}


def run_passes(model, passes: list) -> tuple[object, list[dict]]:
    """Apply passes in order; return the model and what each changed."""
    log = []
    for p in passes:
        result = p(model)
        model = result.model
        log.append({"pass": p.name, "modified": result.modified, **result.details})
    return model, log


def optimize_file(src: str | Path, dst: str | Path, candidate: str = "ort-fusions") -> list[dict]:
    """`edgetx optimize`: apply a candidate's passes to one ONNX file."""
    ir = _ir()
    if candidate not in CANDIDATES:
        raise EdgetxError(f"unknown optimization {candidate!r}; known: {', '.join(CANDIDATES)}")
    try:
        model = ir.load(src)
    except Exception as e:  # onnx_ir raises protobuf/OS errors for unreadable files
        raise EdgetxError(f"{src}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    model, log = run_passes(model, CANDIDATES[candidate])
    tmp = Path(f"{dst}.partial")
    ir.save(model, tmp)
    tmp.replace(dst)
    return log


# --- measured selection --------------------------------------------------------------------------

def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_session(session, golden: dict[str, np.ndarray], repeats: int = 3) -> dict[str, float]:
    """Milliseconds: decoders prefill of the golden prompt and one decode step (score = prefill +
    64 decode steps); encoders one golden batch (score = that)."""
    from edgetx.runtimes.feeds import causal_feeds, empty_cache, encoder_feeds, next_cache

    if session.model.get("kind") == "encoder":
        feeds = encoder_feeds(session.inputs, golden, "batch")
        batch = _median_seconds(lambda: session.run(feeds), repeats) * 1e3
        return {"batch_ms": batch, "score_ms": batch}
    prompt = golden["prefill.input_ids"]
    prefill_feeds = causal_feeds(session.inputs, prompt)
    prefill = _median_seconds(lambda: session.run(prefill_feeds), repeats) * 1e3
    cache = next_cache(session.run(prefill_feeds), empty_cache(session.inputs, 1))
    step_feeds = causal_feeds(session.inputs, prompt[:, -1:], cache=cache)
    decode = _median_seconds(lambda: session.run(step_feeds), repeats * 4) * 1e3
    return {"prefill_ms": prefill, "decode_ms": decode, "score_ms": prefill + DECODE_TOKENS * decode}


@dataclass
class Selection:
    winner: str
    target: str
    candidates: list[dict]

    def to_dict(self) -> dict:
        return {"target": self.target, "winner": self.winner, "score": f"prefill + {DECODE_TOKENS} decode steps "
                "(decoders) or one golden batch (encoders), median ms", "candidates": self.candidates}


TIMING_ROUNDS = 3  # candidates are timed in turn, round after round: load that comes and goes hits them all


def _time_interleaved(sessions: dict, entries: dict[str, dict], golden: dict, timer: Callable,
                      progress: Callable[[str], None]) -> None:
    """Time every session round-robin and record each timing's median over the rounds. Timing one
    candidate after another lets a burst of other work on the machine pick the winner (measured: a
    fused SmolLM2 graph timed at 3x the unfused one while another job ran, 0.9x on a quiet host)."""
    samples: dict[str, list[dict]] = {name: [] for name in sessions}
    for round_ in range(TIMING_ROUNDS):
        for name, session in sessions.items():
            progress(f"timing {name} (round {round_ + 1} of {TIMING_ROUNDS})")
            samples[name].append(timer(session, golden))
    for name, runs in samples.items():
        entries[name].update({key: statistics.median(run[key] for run in runs) for key in runs[0]})
        entries[name]["timing_rounds"] = len(runs)


def select_graph(bundle, fp32_rel: str, write: Callable[[str, object], str], *, target: str = "ort-cpu",
                 candidates: dict[str, list] | None = None, timer: Callable = time_session,
                 threads: int | None = None, progress: Callable[[str], None] = lambda _: None) -> Selection:
    """Build each candidate from the bundle's fp32 graph, keep the fastest that passes parity.

    `write(name, model)` stores a candidate in the bundle being built and returns its bundle path;
    `timer(session, golden)` returns timings with a `score_ms` (injectable for tests).
    """
    from edgetx.parity import verify

    ir = _ir()
    golden = bundle.golden()
    tolerance = bundle.manifest["variants"]["fp32"].get("tolerance")
    results, sessions = [], {}
    for name, passes in (candidates or CANDIDATES).items():
        progress(name)
        entry: dict = {"name": name, "passes": [p.name for p in passes]}
        try:
            model, log = run_passes(ir.load(bundle.file(fp32_rel)), passes)
        except Exception as e:  # a pass that cannot handle this graph is a rejected candidate, not a crash
            entry.update(kept=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            results.append(entry)
            continue
        entry["log"] = log
        entry["file"] = write(name, model)
        bundle.manifest["variants"][name] = {"precision": "fp32", "file": entry["file"], "tolerance": tolerance}
        try:
            (report,) = verify(bundle, backend=target, variants=[name], threads=threads)
        except EdgetxError as e:  # e.g. onnxruntime rejects a graph the rewriter produced
            del bundle.manifest["variants"][name]
            entry.update(kept=False, parity_passed=False, error=str(e).splitlines()[0][:300])
            results.append(entry)
            continue
        entry["parity_passed"] = report.passed
        entry["parity_max_abs"] = report.max_abs
        entry["failed_checks"] = [f"{c.name}: max |diff| {c.max_abs:.3g} ({c.detail})"
                                  for c in report.checks if not c.passed]
        failed = [c.name for c in report.checks if not c.passed]
        if failed and set(failed) <= PADDING_CHECKS:
            # Right at batch 1 but wrong for padded batches (e.g. a fused GroupQueryAttention that
            # ignores attention_mask): never kept, but timed, so the manifest shows what it would gain.
            entry["restriction"] = "wrong for padded batches; correct unpadded"
        if report.passed or "restriction" in entry:
            from edgetx.runtimes.session import Session

            started = time.perf_counter()
            sessions[name] = Session(bundle, variant=name, backend=target, threads=threads)
            entry["load_ms"] = (time.perf_counter() - started) * 1e3
        del bundle.manifest["variants"][name]
        results.append(entry)
    _time_interleaved(sessions, {r["name"]: r for r in results}, golden, timer, progress)
    sessions.clear()
    passing = [r for r in results if r.get("parity_passed")]
    if not passing:
        raise EdgetxError("no optimization candidate passed parity, not even the unfused graph: "
                          + "; ".join(f"{r['name']}: {r.get('failed_checks') or r.get('error')}" for r in results))
    winner = min(passing, key=lambda r: r["score_ms"])
    for r in results:
        r["kept"] = r is winner
    return Selection(winner["name"], target, results)
