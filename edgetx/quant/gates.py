"""Accuracy gates for quantized variants, and automatic mixed precision when a scheme misses.

A quantized variant is compared with the fp32 variant on held-out data the bundle keeps (`quant.npz`),
by the model kind's gate metrics (edgetx.kinds: decoders by KL divergence of the next-token distribution
and top-1 agreement, encoders by cosine of pooled embeddings). Thresholds per precision live in
`edgetx.verify.tolerances.QUANTIZED`.

When a scheme misses its gate, each quantized MatMul's sensitivity is estimated from one fp32
run (its captured input times its weight, quantized in simulation, vs exact), and the most
sensitive are kept in fp32 — 1, 2, 4, ... of them — until the gate holds or nothing is left.
"""

from __future__ import annotations

import gc
import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgetx.errors import EdgetxError
from edgetx.kinds import ModelKind, get_kind
from edgetx.passes.files import file_bytes, load, move, save
from edgetx.progress import log
from edgetx.quant.apply import apply, prepare_int8_graph, weight_matmuls
from edgetx.quant.schemes import Scheme, needs_calibration
from edgetx.quant.sensitivity import sensitivity
from edgetx.runtimes.backend import REFERENCE_BACKEND, SessionOptions, get_backend
from edgetx.verify.tolerances import QUANTIZED


EXACT_SENSITIVITY_MAX = 48  # up to this many quantizable nodes, measure each one's damage exactly
MAX_KEPT_FRACTION = 0.5  # keeping more than this share of the nodes in fp32 defeats the variant


# Gate sessions run a few large batches each (held-out data): without the arena their activations are freed after
# each run instead of held (measured on Whisper base's gates: 5.2 -> 3.2 GB peak RSS)
def gate_options() -> SessionOptions:
    return SessionOptions(memory_arena=False)


def runner(session) -> Callable[..., dict[str, np.ndarray]]:
    """A backend session's run as `run(feeds, output_names=None) -> outputs`, what the kinds call."""
    return lambda feeds, names=None: session.run(feeds, names).outputs


def _feed_key(feeds: dict[str, np.ndarray], names) -> str:
    digest = hashlib.sha256(repr(sorted(names)).encode() if names is not None else b"*")
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


class ReferenceOutputs:
    """The fp32 reference of a gate as a runner that remembers its answers. The gate asks the reference the
    same questions on every trial (the held-out text, then greedy decoding, which depends only on the
    reference's own answers), so after the first evaluation the fp32 session can be released: trials then
    hold the quantizer's working copy or one candidate session, never the fp32 session beside them. A
    question not asked before reopens the session."""

    def __init__(self, open_session: Callable[[], object]):
        self._open, self._session, self._answers = open_session, None, {}
        self.sessions_opened = 0

    def run(self, feeds: dict[str, np.ndarray], names=None) -> SimpleNamespace:
        """A backend session's `run`: `.outputs` are the fp32 answers."""
        key = _feed_key(feeds, names)
        if key not in self._answers:
            if self._session is None:
                self._session = self._open()
                self.sessions_opened += 1
            self._answers[key] = self._session.run(feeds, names).outputs
        return SimpleNamespace(outputs=self._answers[key])

    def release(self) -> None:
        """Close the fp32 session (its answers are kept)."""
        if self._session is not None:
            self._session.close()
            self._session = None
            gc.collect()


def evaluate(kind: ModelKind, inputs: list[dict], reference, candidate, data: dict[str, np.ndarray],
             facts: dict | None = None) -> dict[str, float]:
    """Gate metrics of `candidate` against `reference` (backend sessions) on the held-out data."""
    return kind.gate_metrics(runner(reference), runner(candidate), inputs, data, facts or {})


def _exact_sensitivity(s: Scheme, fp32_path: Path, nodes: list[str], trial: Path, kind: ModelKind,
                       inputs: list[dict], reference, data, facts, calibration, backend: str) -> list[str]:
    """Nodes ranked by the gate metric when each is the only one quantized (most damaging first)."""
    scores = {}
    for node in nodes:
        apply(s, fp32_path, trial, exclude=[n for n in nodes if n != node], calibration=calibration, inputs=inputs)
        candidate = get_backend(backend).create_session(trial, gate_options())
        scores[node] = kind.gate_score(evaluate(kind, inputs, reference, candidate, data, facts))
        candidate.close()  # before the next trial's quantizer runs
        del candidate
        gc.collect()
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
    eight_bit: list[str] = field(default_factory=list)  # nodes moved to 8-bit instead (schemes with "promote_bits")

    def to_dict(self) -> dict:
        return {"scheme": self.scheme.to_dict(), "gate_passed": self.passed, "gate": self.metrics,
                "missed_by": self.missed_by, "kept_fp32_nodes": self.kept_fp32, "quantizable_nodes": self.quantizable,
                "bytes": self.bytes, "mixed_precision_search": self.steps,
                **({"eight_bit_nodes": self.eight_bit} if self.eight_bit else {}),
                **({"graph_rewrites": self.rewrites} if self.rewrites else {})}


def quantize_gated(s: Scheme, fp32_path: Path, out_path: Path, kind: str | ModelKind, inputs: list[dict],
                   data: dict[str, np.ndarray], facts: dict | None = None, backend: str = REFERENCE_BACKEND,
                   mixed_precision: bool = True) -> GatedVariant:
    """Quantize with `s`; if the gate misses, keep the most sensitive nodes in fp32 until it holds (a scheme with
    the option `promote_bits`, e.g. int4-mixed, moves them to that many bits instead: 1, 2, 4, ... of them).
    `kind` (a model kind or its name) says how to calibrate and measure; `facts` is the manifest's model
    block (e.g. an encoder's pooling). `out_path` is written only when the gate passes."""
    kind = get_kind(kind, fp32_path) if isinstance(kind, str) else kind
    tolerance = QUANTIZED[s.precision]
    # The fp32 answers are computed once, by a session open only while they are: a large model's fp32 weights
    # are never held by onnxruntime while the quantizer or a candidate session holds a copy of them too
    reference = ReferenceOutputs(lambda: get_backend(backend).create_session(fp32_path, gate_options()))
    calibration = kind.calibration_feeds(inputs, data, reference=runner(reference), static=s.method == "qdq") \
        if needs_calibration(s) else None
    evaluate(kind, inputs, reference, reference, data, facts)  # asks the reference every question of the gate
    reference.release()
    with tempfile.TemporaryDirectory(prefix="edgetx-quant-", dir=out_path.parent) as tmp:
        # the graph the scheme quantizes (dynamic int8 rewrites fused ops first): node names refer to it
        source, rewrites = (prepare_int8_graph(s, fp32_path, Path(tmp) / "source.onnx", calibration)
                            if s.method == "dynamic" else (fp32_path, None))
        nodes = weight_matmuls(source)
        ranked: list[str] | None = None
        steps: list[dict] = []
        keep: list[str] = []
        promote = bool(s.options.get("promote_bits"))  # the search moves nodes to more bits, not to fp32
        safe = f"{s.options.get('promote_bits')}-bit" if promote else "fp32"
        trial = Path(tmp) / "model.onnx"
        while True:
            log.debug("%s: %d of %d nodes kept in %s", s.name, len(keep), len(nodes), safe)
            try:
                if promote:
                    apply(s, source, trial, calibration=calibration, inputs=inputs, promote=keep)
                else:
                    apply(s, source, trial, exclude=keep, calibration=calibration, inputs=inputs)
            except EdgetxError:
                raise
            except Exception as e:  # onnxruntime.quantization raises plain exceptions
                raise EdgetxError(f"scheme {s.name} failed on {fp32_path.name}: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]}") from None
            candidate = get_backend(backend).create_session(trial, gate_options())
            result = evaluate(kind, inputs, reference, candidate, data, facts)
            reference.release()  # in case the candidate's answers led it to a new question
            candidate.close()
            del candidate
            gc.collect()
            missed = kind.gate_misses(result, tolerance)
            steps.append({"eight_bit" if promote else "kept_fp32": len(keep), "bytes": file_bytes(trial), **result,
                          "missed_by": missed})
            if not missed or len(keep) >= len(nodes) or not mixed_precision:
                break
            cap = int(MAX_KEPT_FRACTION * len(nodes))  # doubling stops at the cap, which is tried once
            if ranked is not None and min(2 * len(keep), cap) <= len(keep):
                missed.append(f"mixed precision gave up: keeping more than {MAX_KEPT_FRACTION:.0%} of the "
                              f"{len(nodes)} quantizable nodes in {safe} would defeat the variant")
                break
            if ranked is None:
                log.info("%s: gate missed (%s); measuring node sensitivity", s.name, "; ".join(missed))
                if len(nodes) <= EXACT_SENSITIVITY_MAX:
                    ranked = _exact_sensitivity(s, source, nodes, Path(tmp) / "one.onnx", kind, inputs,
                                                reference, data, facts, calibration, backend)
                    method = "exact: each node quantized alone, gate metric measured"
                else:
                    ranked = [n for n, _ in sensitivity(source, s, kind.sensitivity_feeds(inputs, data), backend)]
                    method = "estimated: simulated quantization error of each MatMul's output"
                ranked = [n for n in _output_nodes(source) if n in nodes] + [n for n in ranked]
                ranked = list(dict.fromkeys(ranked + nodes))
                steps[-1]["sensitivity"] = method
            keep = ranked[: max(1, min(2 * len(keep), cap) if keep else 1)]
        if not missed and nodes and len(keep) >= len(nodes):
            missed = [f"the gate holds only with every node in {safe}: nothing left to quantize"]
        kept = keep if not missed else []
        variant = GatedVariant(s, not missed, result, missed, [] if promote else kept, len(nodes),
                               file_bytes(trial), steps, rewrites, eight_bit=kept if promote else [])
        if variant.passed:
            move(trial, out_path)  # with its data file, if it has one (both are named model.onnx*)
    return variant


def quantize_gated_graphs(s: Scheme, fp32_paths: dict[str, Path], out_paths: dict[str, Path], kind: ModelKind,
                          io: dict, data: dict[str, np.ndarray], facts: dict | None = None,
                          backend: str = REFERENCE_BACKEND) -> GatedVariant:
    """A model of several graphs (an encoder-decoder): the graphs quantized with `s`, judged together by the kind's
    gate (`kind.gate_metrics` gets {graph: run} for the fp32 reference and the candidate, and the whole io block).
    Mixed precision works graph by graph: when every graph quantized misses, each graph alone is tried (the largest
    first), the others staying fp32, and the first that holds is kept. `out_paths` are written only when it holds."""
    graph_inputs = {g: io["inputs"] if g == kind.main_graph else io["components"][g]["inputs"] for g in fp32_paths}
    calibration = {g: kind.graph_calibration_feeds(g, graph_inputs[g], data) for g in fp32_paths} \
        if needs_calibration(s) else {}
    tolerance = QUANTIZED[s.precision]
    references = {g: ReferenceOutputs(lambda p=p: get_backend(backend).create_session(p, gate_options()))
                  for g, p in fp32_paths.items()}
    runs = {g: runner(r) for g, r in references.items()}
    kind.gate_metrics(runs, runs, io, data, facts or {})  # asks the references every question of the gate
    for reference in references.values():
        reference.release()
    with tempfile.TemporaryDirectory(prefix="edgetx-quant-", dir=next(iter(out_paths.values())).parent.parent) as tmp:
        quantized, nodes = {}, {}
        for graph, path in fp32_paths.items():
            folder = Path(tmp) / graph
            folder.mkdir()
            source = prepare_int8_graph(s, path, folder / "source.onnx", None)[0] if s.method == "dynamic" else path
            nodes[graph] = weight_matmuls(source)
            quantized[graph] = folder / out_paths[graph].name  # one basename: a data file keeps its location
            try:
                apply(s, source, quantized[graph], exclude=[], calibration=calibration.get(graph),
                      inputs=graph_inputs[graph])
            except EdgetxError:
                raise
            except Exception as e:  # onnxruntime.quantization raises plain exceptions
                raise EdgetxError(f"scheme {s.name} failed on {path.parent.name}/{path.name}: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:300]}") from None
        by_size = sorted(fp32_paths, key=lambda g: -file_bytes(fp32_paths[g]))
        trials = [list(fp32_paths)] + ([[g] for g in by_size] if len(fp32_paths) > 1 else [])
        steps = []
        for chosen in trials:
            files = {g: quantized[g] if g in chosen else fp32_paths[g] for g in fp32_paths}
            candidates = {g: get_backend(backend).create_session(f, gate_options()) for g, f in files.items()}
            result = kind.gate_metrics(runs, {g: runner(c) for g, c in candidates.items()}, io, data, facts or {})
            for candidate in candidates.values():
                candidate.close()
            for reference in references.values():
                reference.release()
            missed = kind.gate_misses(result, tolerance)
            kept = [f"{g}/{n}" for g in fp32_paths if g not in chosen for n in nodes[g]]
            size = sum(file_bytes(f) for f in files.values())
            steps.append({"quantized_graphs": chosen, "kept_fp32": len(kept), "bytes": size, **result,
                          "missed_by": list(missed)})
            if not missed:
                break
        if missed and len(trials) > 1:
            missed.append("no graph alone holds the gate either (the others in fp32)")
        total = sum(len(n) for n in nodes.values())
        variant = GatedVariant(s, not missed, result, missed, kept if not missed else [], total, size, steps)
        if variant.passed:
            for graph, path in files.items():
                out_paths[graph].parent.mkdir(parents=True, exist_ok=True)
                if graph in chosen:
                    move(path, out_paths[graph])
                else:  # an fp32 graph of the mixed variant: its own copy in the variant's folder
                    save(load(path), out_paths[graph])
    return variant
