"""Accuracy gates for quantized variants, and automatic mixed precision when a scheme misses.

A quantized variant is compared with the fp32 variant on held-out text the bundle keeps
(`quant.npz`): decoders by KL divergence of the next-token distribution, top-1 agreement,
bits per token and greedy-generation agreement; encoders by cosine of pooled embeddings.
Thresholds per precision live in `edgetx.verify.tolerances.QUANTIZED`.

When a scheme misses its gate, each quantized MatMul's sensitivity is estimated from one fp32
run (its captured input times its weight, quantized in simulation, vs exact), and the most
sensitive are kept in fp32 — 1, 2, 4, ... of them — until the gate holds or nothing is left.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetx.verify import metrics
from edgetx.errors import EdgetxError
from edgetx.quant.schemes import Scheme, needs_calibration
from edgetx.quant.sensitivity import sensitivity
from edgetx.quant.apply import apply, prepare_int8_graph, weight_matmuls
from edgetx.runtimes.base import SessionOptions, get_backend
from edgetx.runtimes.feeds import causal_feeds, empty_cache, encoder_feeds, next_cache
from edgetx.verify.tolerances import QUANTIZED, Tolerance

GREEDY_STEPS = 16
EXACT_SENSITIVITY_MAX = 48  # up to this many quantizable nodes, measure each one's damage exactly
MAX_KEPT_FRACTION = 0.5  # keeping more than this share of the nodes in fp32 defeats the variant


def _run(session, feeds: dict) -> dict[str, np.ndarray]:
    return session.run(feeds).outputs


def sequences(data: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    keys = sorted((k for k in data if k.startswith(prefix + ".")), key=lambda k: int(k.rsplit(".", 1)[1]))
    return [data[k] for k in keys]


def calibration_feeds(kind: str, inputs: list[dict], data: dict[str, np.ndarray],
                      span_positions: bool = False) -> list[dict[str, np.ndarray]]:
    """Calibration inputs from the bundle's quant data. `span_positions` (decoders) adds one sample
    as long as the longest held-out sequence (the calibration texts joined), so that static
    activation ranges cover every position the model is used at: calibrated on 128-token texts
    only, position-dependent tensors (rotary angles) saturate beyond position 128 and a QDQ
    reference GPT lost its gate by far (mean KL 1.38 at positions up to 255)."""
    if kind == "encoder":
        return [encoder_feeds(inputs, data, "calib")]
    feeds = [causal_feeds(inputs, ids) for ids in sequences(data, "calib")]
    longest = max((ids.shape[1] for ids in sequences(data, "eval")), default=0)
    if span_positions and feeds and longest > max(ids.shape[1] for ids in sequences(data, "calib")):
        joined = np.concatenate(sequences(data, "calib"), axis=1)
        if joined.shape[1] >= longest:
            feeds.append(causal_feeds(inputs, joined[:, :longest]))
    return feeds


def decode_calibration(reference, inputs: list[dict], data: dict[str, np.ndarray],
                       pasts: tuple[int, ...] = (15, 63, 127)) -> list[dict[str, np.ndarray]]:
    """Decoder calibration samples of one-token steps with a real KV cache (from `reference` on the
    calibration text), past lengths `pasts` and the longest held-out length - 1. A static QDQ graph
    calibrated only on prompts (empty caches) clips every cached key/value at decode time: measured on
    the reference GPT, greedy decoding agreed with fp32 for 1 of 24 steps."""
    joined = np.concatenate(sequences(data, "calib"), axis=1)
    longest = max((ids.shape[1] for ids in sequences(data, "eval")), default=0)
    feeds = []
    for past in sorted({*pasts, longest - 1}):
        if past < 1 or past + 1 > joined.shape[1]:
            continue
        cache = next_cache(_run(reference, causal_feeds(inputs, joined[:, :past])), empty_cache(inputs, 1))
        feeds.append(causal_feeds(inputs, joined[:, past : past + 1], cache=cache))
    return feeds


def _greedy(session, inputs: list[dict], prompt: np.ndarray, steps: int) -> list[int]:
    """Greedy tokens from a backend session, feeding its cache back."""
    feeds, cache, tokens = causal_feeds(inputs, prompt), None, []
    for _ in range(steps):
        out = _run(session, feeds)
        tokens.append(int(out["logits"][0, -1].argmax()))
        cache = next_cache(out, cache or empty_cache(inputs, 1))
        feeds = causal_feeds(inputs, np.array([[tokens[-1]]], dtype=np.int64), cache=cache)
    return tokens


def evaluate(kind: str, inputs: list[dict], reference, candidate, data: dict[str, np.ndarray],
             pooling: dict | None = None) -> dict[str, float]:
    """Gate metrics of `candidate` against `reference` (backend sessions) on the held-out data."""
    if kind == "encoder":
        from edgetx.runtimes.pooling import pool

        feeds = encoder_feeds(inputs, data, "eval")
        ref = pool(_run(reference, feeds)["last_hidden_state"], feeds["attention_mask"], pooling or {})
        got = pool(_run(candidate, feeds)["last_hidden_state"], feeds["attention_mask"], pooling or {})
        cosines = metrics.cosine(ref, got)
        return {"cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min()), "texts": len(cosines)}
    klds, agree, bits_ref, bits_got, positions = [], [], [], [], 0
    for ids in sequences(data, "eval"):
        feeds = causal_feeds(inputs, ids)
        ref, got = _run(reference, feeds)["logits"][0], _run(candidate, feeds)["logits"][0]
        klds.append(metrics.kl_divergence(ref, got))
        agree.append(np.argmax(ref, -1) == np.argmax(got, -1))
        bits_ref.append(metrics.bits_per_token(ref[:-1], ids[0, 1:]) * (len(ids[0]) - 1))
        bits_got.append(metrics.bits_per_token(got[:-1], ids[0, 1:]) * (len(ids[0]) - 1))
        positions += len(ids[0]) - 1
    prompt = sequences(data, "eval")[0][:, :64]
    want, have = _greedy(reference, inputs, prompt, GREEDY_STEPS), _greedy(candidate, inputs, prompt, GREEDY_STEPS)
    agreed, _ = metrics.token_agreement(want, have)
    return {"kld_mean": float(np.concatenate(klds).mean()), "kld_max": float(np.concatenate(klds).max()),
            "top1": float(np.concatenate(agree).mean()), "bits_per_token_fp32": float(sum(bits_ref) / positions),
            "bits_per_token": float(sum(bits_got) / positions), "greedy_agreement": agreed / GREEDY_STEPS,
            "tokens": positions}


def misses(kind: str, result: dict[str, float], tolerance: Tolerance) -> list[str]:
    """What missed the gate, and by how much (empty = passed)."""
    out = []
    if kind == "encoder":
        if result["cosine_mean"] < tolerance.min_cosine_mean:
            out.append(f"cosine mean {result['cosine_mean']:.5f} < {tolerance.min_cosine_mean} "
                       f"(by {tolerance.min_cosine_mean - result['cosine_mean']:.5f})")
        if result["cosine_min"] < tolerance.min_cosine:
            out.append(f"cosine min {result['cosine_min']:.5f} < {tolerance.min_cosine} "
                       f"(by {tolerance.min_cosine - result['cosine_min']:.5f})")
        return out
    if result["kld_mean"] > tolerance.max_kld:
        out.append(f"mean KL {result['kld_mean']:.4f} > {tolerance.max_kld} (by {result['kld_mean'] - tolerance.max_kld:.4f})")
    if result["top1"] < tolerance.min_top1:
        out.append(f"top-1 {result['top1']:.3f} < {tolerance.min_top1} (by {tolerance.min_top1 - result['top1']:.3f})")
    return out


def _gate_score(kind: str, result: dict[str, float]) -> float:
    return 1.0 - result["cosine_mean"] if kind == "encoder" else result["kld_mean"]


def _exact_sensitivity(s: Scheme, fp32_path: Path, nodes: list[str], trial: Path, kind: str, inputs: list[dict],
                       reference, data, pooling, calibration, backend: str) -> list[str]:
    """Nodes ranked by the gate metric when each is the only one quantized (most damaging first)."""
    scores = {}
    for node in nodes:
        apply(s, fp32_path, trial, exclude=[n for n in nodes if n != node], calibration=calibration, inputs=inputs)
        candidate = get_backend(backend).create_session(trial, SessionOptions())
        scores[node] = _gate_score(kind, evaluate(kind, inputs, reference, candidate, data, pooling))
    return sorted(nodes, key=lambda n: -scores[n])


def _output_nodes(fp32_path: Path) -> list[str]:
    """MatMuls that produce a graph output directly (an LM head): nothing downstream renormalises
    their error, so they go first when the proxy ranks nodes."""
    import onnx

    model = onnx.load(str(fp32_path), load_external_data=False)
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and set(n.output) & outputs]


# --- a gated variant -----------------------------------------------------------------------------

@dataclass
class GatedVariant:
    scheme: Scheme
    passed: bool
    metrics: dict
    missed_by: list[str]
    kept_fp32: list[str] = field(default_factory=list)  # nodes left in fp32 by mixed precision
    quantizable: int = 0
    bytes: int = 0
    steps: list[dict] = field(default_factory=list)  # the mixed-precision search, step by step
    rewrites: dict | None = None  # what edgetx.quant.outliers.prepare rewrote before quantizing (dynamic int8)

    def to_dict(self) -> dict:
        return {"scheme": self.scheme.to_dict(), "gate_passed": self.passed, "gate": self.metrics,
                "missed_by": self.missed_by, "kept_fp32_nodes": self.kept_fp32, "quantizable_nodes": self.quantizable,
                "bytes": self.bytes, "mixed_precision_search": self.steps,
                **({"graph_rewrites": self.rewrites} if self.rewrites else {})}


def quantize_gated(s: Scheme, fp32_path: Path, out_path: Path, kind: str, inputs: list[dict],
                   data: dict[str, np.ndarray], pooling: dict | None = None, backend: str = "ort-cpu",
                   mixed_precision: bool = True, progress: Callable[[str], None] = lambda _: None) -> GatedVariant:
    """Quantize with `s`; if the gate misses, keep the most sensitive nodes in fp32 until it holds.
    `out_path` is written only when the gate passes."""
    tolerance = QUANTIZED[s.precision]
    calibration = calibration_feeds(kind, inputs, data, span_positions=s.method == "qdq") \
        if needs_calibration(s) else None
    reference = get_backend(backend).create_session(fp32_path, SessionOptions())
    if s.method == "qdq" and kind == "causal-lm":
        calibration = calibration + decode_calibration(reference, inputs, data)
    with tempfile.TemporaryDirectory(prefix="edgetx-quant-", dir=out_path.parent) as tmp:
        # the graph the scheme quantizes (dynamic int8 rewrites fused ops first): node names refer to it
        source, rewrites = (prepare_int8_graph(s, fp32_path, Path(tmp) / "source.onnx", calibration)
                            if s.method == "dynamic" else (fp32_path, None))
        nodes = weight_matmuls(source)
        ranked: list[str] | None = None
        steps: list[dict] = []
        keep: list[str] = []
        trial = Path(tmp) / "model.onnx"
        while True:
            progress(f"{s.name}: {len(keep)} of {len(nodes)} nodes kept in fp32")
            try:
                apply(s, source, trial, exclude=keep, calibration=calibration, inputs=inputs)
            except EdgetxError:
                raise
            except Exception as e:  # onnxruntime.quantization raises plain exceptions
                raise EdgetxError(f"scheme {s.name} failed on {fp32_path.name}: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]}") from None
            candidate = get_backend(backend).create_session(trial, SessionOptions())
            result = evaluate(kind, inputs, reference, candidate, data, pooling)
            missed = misses(kind, result, tolerance)
            steps.append({"kept_fp32": len(keep), "bytes": trial.stat().st_size, **result, "missed_by": missed})
            if not missed or len(keep) >= len(nodes) or not mixed_precision:
                break
            cap = int(MAX_KEPT_FRACTION * len(nodes))  # doubling stops at the cap, which is tried once
            if ranked is not None and min(2 * len(keep), cap) <= len(keep):
                missed.append(f"mixed precision gave up: keeping more than {MAX_KEPT_FRACTION:.0%} of the "
                              f"{len(nodes)} quantizable nodes in fp32 would defeat the variant")
                break
            if ranked is None:
                progress(f"{s.name}: gate missed ({'; '.join(missed)}); measuring node sensitivity")
                if len(nodes) <= EXACT_SENSITIVITY_MAX:
                    ranked = _exact_sensitivity(s, source, nodes, Path(tmp) / "one.onnx", kind, inputs,
                                                reference, data, pooling, calibration, backend)
                    method = "exact: each node quantized alone, gate metric measured"
                else:
                    feeds = ([encoder_feeds(inputs, data, "eval")] if kind == "encoder"
                             else [causal_feeds(inputs, ids) for ids in sequences(data, "eval")[:2]])
                    ranked = [n for n, _ in sensitivity(source, s, feeds, backend)]
                    method = "estimated: simulated quantization error of each MatMul's output"
                ranked = [n for n in _output_nodes(source) if n in nodes] + [n for n in ranked]
                ranked = list(dict.fromkeys(ranked + nodes))
                steps[-1]["sensitivity"] = method
            keep = ranked[: max(1, min(2 * len(keep), cap) if keep else 1)]
        if not missed and nodes and len(keep) >= len(nodes):
            missed = ["the gate holds only with every node in fp32: nothing left to quantize"]
        variant = GatedVariant(s, not missed, result, missed, keep if not missed else [], len(nodes),
                               trial.stat().st_size, steps, rewrites)
        if variant.passed:
            trial.replace(out_path)
    return variant
