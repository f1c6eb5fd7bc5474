"""Pre-flight: will a bundle's variants run on a backend, and where do their nodes go?

For each variant, on the named backend (any backend whose sessions report placement, see
edgetx.runtimes.vendor): load the file the backend takes, run it once on real inputs, compare the
outputs with onnxruntime CPU on the same inputs (under the variant's tolerance), and report
- placement per op type: how many nodes of each type the backend's provider took, how many fell
  back to the CPU EP, and the provider's own reason where it gave one;
- partitions: how many pieces the graph was cut into (each boundary copies tensors);
- problems, each with a concrete remedy: dynamic shapes (fix them), onnxruntime CPU fusions the
  backend does not know (rebuild unfused), dynamic int8 or weight-only int4 kernels (use static
  QDQ), masks filled with -inf / -3.4e38 (use a finite value), ops the provider lacks;
- with `apply=True`, the remedies that are safe as a convert option are applied to the bundle:
  fixed-shape copies (`edgetx convert --to fixed`), with finite masks when needed, each checked
  against the dynamic variant before it is recorded; then the variant is run again.
Remedies that need a rebuild (unfused graph, QDQ schemes) are printed as the command to run.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetx.bundle import Bundle
from edgetx.errors import BackendError, EdgetxError, InputError
from edgetx.kinds import kind_of
from edgetx.progress import log
from edgetx.runtimes.backend import FIXED_FORMAT, REFERENCE_BACKEND

# onnxruntime's CPU-oriented fusions (edgetx build's optimize stage): contrib ops other backends lack.
ORT_FUSIONS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "SkipLayerNormalization",
               "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "BiasGelu", "FastGelu", "Gelu",
               "RotaryEmbedding", "FusedMatMul", "EmbedLayerNormalization", "BiasAdd", "BiasSplitGelu",
               "QuickGelu", "BiasSoftmax", "FusedConv", "MatMulIntegerToFloat"}
DYNAMIC_INT8 = {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                "ConvInteger"}
WEIGHT_ONLY = {"MatMulNBits", "GatherBlockQuantized"}
# ops whose inputs are shapes: with fixed dims they fold to constants before any provider sees them.
SHAPE_OPS = {"Shape", "Range", "ConstantOfShape", "Size", "NonZero", "Expand"}


@dataclass
class Problem:
    kind: str  # dynamic-shapes, ort-fusions, dynamic-int8, weight-only, mask, unsupported-op, partitions, load, parity
    detail: str
    remedy: str
    safe: bool = False  # applied by `edgetx preflight --apply`
    applied: bool = False


@dataclass
class VariantPreflight:
    variant: str
    precision: str
    file: str = ""
    shapes: str = ""  # "fixed batch=1,seq=128" or "dynamic"
    provider: str = ""
    nodes: int = 0
    on_backend: int = 0
    partitions: int = 0
    by_op: dict = field(default_factory=dict)  # op -> {"total", "on_backend", "fallback", "reason"}
    run_seconds: float | None = None
    parity: dict | None = None  # {"passed", "detail", "max_abs"} vs ort-cpu on the same inputs
    error: str = ""
    problems: list[Problem] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _load_onnx(path: Path):
    """The graph as an onnx_ir model for the mask and QDQ checks (None without the export extra)."""
    try:
        from edgetx.passes.files import load
    except EdgetxError:
        return None
    return load(path)


def _reasons(messages: list[str], nodes: list[list[str]]) -> dict[str, str]:
    """op type -> the provider's first reason for declining a node of that type (from its log)."""
    op_of = {name: op for op, name, _ in nodes}
    out: dict[str, str] = {}
    for message in messages:
        named = re.search(r"Node name: (\S+)", message)
        reason = re.search(r"REASON\s*:\s*(.*)", message)
        op = op_of.get(named.group(1)) if named else None
        if op is None:
            typed = re.search(r"\((\w+)\)", message)
            op = typed.group(1) if typed else None
        if op is None:
            continue
        text = (reason.group(1) if reason else message).strip()
        for full in (op, *[o for o in op_of.values() if o.endswith("." + op)]):
            out.setdefault(full, text[:300])
    return out


def _remedy(op: str, provider: str, shapes_fixed: bool, needs_fixed: bool, reason: str) -> tuple[str, str]:
    """(problem kind, remedy) for nodes of type `op` that the provider did not take."""
    short = op.split(".")[-1]
    if op.startswith("com.microsoft.") and short in ORT_FUSIONS:
        return "ort-fusions", (f"{short} is an onnxruntime CPU fusion (edgetx build optimizes the fp32 graph for "
                               "ort-cpu); rebuild unfused so the backend sees standard ONNX ops: "
                               "`edgetx build MODEL --no-optimize ...`")
    if short in DYNAMIC_INT8:
        return "dynamic-int8", ("dynamic int8 (activations quantized at run time) is a CPU kernel; use static QDQ "
                                "instead: `edgetx build MODEL --no-optimize --quantize qdq-a8w8` (or qdq-a16w8)")
    if short in WEIGHT_ONLY:
        return "weight-only", (f"{short} (weight-only int4/int8) is a CPU kernel; for an NPU use static QDQ: "
                               "`edgetx build MODEL --no-optimize --quantize qdq-a16w8`")
    if needs_fixed and not shapes_fixed:
        return "dynamic-shapes", "fix the shapes (see the dynamic-shapes problem): the provider takes static shapes only"
    if short in SHAPE_OPS and not shapes_fixed:
        return "dynamic-shapes", "with fixed shapes these fold to constants: `edgetx convert BUNDLE --to fixed --shape ...`"
    why = f" ({reason})" if reason else ""
    return "unsupported-op", (f"{provider} does not take {short}{why}; it runs on the CPU EP at a partition boundary. "
                              f"Export it as ops the provider has (a decomposition), or accept the fallback")


def _compare(bundle: Bundle, plugin, variant, want: dict, got: dict) -> dict:
    from edgetx.verify.fixed import compare_runs
    from edgetx.verify.parity import _backend_tolerance

    tolerance, note = _backend_tolerance(plugin, variant.precision, variant.tolerance)
    names = [k for k in want if k in got]
    ok, diff, detail = compare_runs(kind_of(bundle), tolerance, {k: want[k] for k in names}, {k: got[k] for k in names})
    if not np.isfinite(diff):
        return {"passed": False, "max_abs": None, "detail": detail}
    return {"passed": ok, "max_abs": diff, "detail": f"vs ort-cpu on the same inputs: {detail}{note}"}


def check_variant(bundle: Bundle, backend: str, name: str) -> VariantPreflight:
    """Load, place and run one variant on `backend` (the file its model_format names, else the
    dynamic file); list the problems with their remedies. Nothing is changed."""
    from edgetx.verify.fixed import fixed_feeds
    from edgetx.verify.parity import golden_feeds
    from edgetx.passes.finite_masks import mask_constants
    from edgetx.runtimes.backend import SessionOptions, get_backend
    from edgetx.runtimes.session import Session
    from edgetx.runtimes.vendor import summarize_placement

    plugin = get_backend(backend)
    capabilities = plugin.capabilities
    provider = capabilities.provider
    if not capabilities.reports_placement or not provider:
        raise InputError(f"backend {backend!r} does not report node placement; pre-flight needs one that does "
                         "(e.g. qnn, openvino, xnnpack)")
    variant = bundle.variant(name)
    needs_fixed = capabilities.fixed_shapes
    fixed = FIXED_FORMAT in (variant.formats or {})
    dims = (variant.fixed_shape or {}).get("dims") if fixed else None
    rel = variant.file_for(FIXED_FORMAT) if (needs_fixed and fixed) else variant.file
    result = VariantPreflight(name, variant.precision, rel, ("fixed " + ",".join(f"{k}={v}" for k, v in dims.items()))
                              if dims and rel != variant.file else "dynamic", provider)
    if needs_fixed and not fixed:
        shape = kind_of(bundle).default_fixed_dims
        result.problems.append(Problem(
            "dynamic-shapes", f"{backend} takes fixed shapes only and {name} has no fixed-shape file: this run "
            "uses the dynamic file, which the provider cannot take", f"`edgetx convert {bundle.path} --to fixed "
            f"--shape {shape} --variant {name}` (or `edgetx preflight ... --apply`)", safe=True))
    model = _load_onnx(bundle.file(rel))
    masks = mask_constants(model) if model is not None else []
    low_precision = capabilities.float_precision != "fp32" or any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in (model.graph if model is not None else []))
    if masks and low_precision:
        where = ", ".join(f"{w} = {v:.3g}" for w, v in masks[:3])
        result.problems.append(Problem(
            "mask", f"mask fill values of -inf / float32 min ({where}): in fp16 they are -inf (0 x -inf = NaN) and "
            "static QDQ calibration of them gives infinite scales",
            "replace them by a finite -1e4 (edgetx.passes.finite_masks): `edgetx preflight ... --apply` writes "
            "fixed copies with finite masks; the qdq-* schemes do it before calibrating", safe=True))

    reference = Session(bundle, variant=name, backend=REFERENCE_BACKEND, verify_hashes=False)
    feeds = fixed_feeds(bundle, reference, dims) if (dims and rel != variant.file) else golden_feeds(reference, bundle.golden())
    try:
        session = plugin.create_session(bundle.file(rel), SessionOptions())
    except BackendError as e:
        result.error = str(e)
        hint = ("rebuild unfused (`edgetx build MODEL --no-optimize`): the provider's model reader rejects "
                "onnxruntime's contrib fusions" if re.search("|".join(ORT_FUSIONS), str(e)) else
                "see the error; `edgetx backends` shows the backend's runtime version")
        result.problems.append(Problem("load", f"{backend} could not load {rel}: {str(e).splitlines()[0][:400]}", hint))
        return result
    try:
        summary = summarize_placement(session.placement, provider)
        if summary:
            result.nodes, result.on_backend, result.partitions = summary["nodes"], summary["on_backend"], summary["partitions"]
            result.messages = summary["messages"][:50]
            reasons = _reasons(summary["messages"], session.placement["nodes"])
            for op, counts in sorted(summary["by_op"].items(), key=lambda kv: (kv[1]["on_backend"] - kv[1]["total"], kv[0])):
                result.by_op[op] = {**counts, "fallback": counts["total"] - counts["on_backend"], "reason": reasons.get(op, "")}
        started = time.perf_counter()
        got = session.run(feeds).outputs
        result.run_seconds = time.perf_counter() - started
        result.parity = _compare(bundle, plugin, variant, reference.run(feeds), got)
    except BackendError as e:
        result.error = str(e)
        result.problems.append(Problem("load", f"{backend} failed to run {rel}: {str(e).splitlines()[0][:400]}",
                                       "see the error"))
    finally:
        session.close()
    grouped: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for op, counts in result.by_op.items():
        if counts["fallback"]:
            kind_, remedy = _remedy(op, provider, rel != variant.file, needs_fixed, counts["reason"])
            key = (kind_, remedy if kind_ == "unsupported-op" else kind_)
            grouped.setdefault(key, []).append((op, counts))
    for (kind_, _), ops in grouped.items():
        _, remedy = _remedy(ops[0][0], provider, rel != variant.file, needs_fixed, ops[0][1]["reason"])
        if kind_ == "ort-fusions":
            remedy = remedy.replace(ops[0][0].split(".")[-1] + " is an onnxruntime CPU fusion", "these are onnxruntime CPU fusions")
        listed = ", ".join(f"{op} x{c['fallback']}" for op, c in ops)
        reasons = list(dict.fromkeys(c["reason"] for _, c in ops if c["reason"]))
        said = f"; {provider} says: " + " / ".join(r[:160] for r in reasons[:3]) if reasons else ""
        total = sum(c["fallback"] for _, c in ops)
        result.problems.append(Problem(kind_, f"{total} node{'s' if total != 1 else ''} on the CPU EP ({listed}){said}",
                                       remedy))
    if result.partitions > 1:
        result.problems.append(Problem("partitions", f"the graph is cut into {result.partitions} {provider} partitions "
                                       f"with {result.nodes - result.on_backend} CPU nodes between them: every "
                                       "boundary copies tensors", "remove the fallbacks above to merge them"))
    if result.parity and not result.parity["passed"]:
        result.problems.append(Problem("parity", f"outputs differ from ort-cpu beyond the variant's tolerance: "
                                       f"{result.parity['detail']}", _parity_remedy(result, backend, name)))
    return result


def _parity_remedy(result: VariantPreflight, backend: str, name: str) -> str:
    if any(op.split(".")[-1] in DYNAMIC_INT8 for op in result.by_op):
        return ("dynamic int8 quantizes activations at run time, and the provider computes it differently from "
                "onnxruntime CPU: use static QDQ, calibrated once (`edgetx build MODEL --no-optimize --quantize qdq-a16w8`)")
    if any(p.kind == "mask" and not p.applied for p in result.problems):
        return "apply the mask remedy above (`edgetx preflight ... --apply`), then check again"
    return f"`edgetx verify BUNDLE --backend {backend} --variant {name}` shows the check; `--explain` finds where it parts"


def preflight(bundle: Bundle, backend: str, variants: list[str] | None = None, dims: dict[str, int] | None = None,
              apply: bool = False) -> list[VariantPreflight]:
    """check_variant for each (or the named) variant; with `apply`, first add the safe remedies
    (fixed-shape copies at `dims`, with finite masks where the check found mask problems)."""
    from edgetx.build.convert import add_fixed, parse_dims
    from edgetx.passes.finite_masks import FiniteMasks

    names = variants or list(bundle.variants)
    unknown = [n for n in names if n not in bundle.variants]
    if unknown:
        raise InputError(f"unknown variant(s) {', '.join(unknown)}; the bundle has {', '.join(bundle.variants)}")
    results = []
    for name in names:
        log.info("%s: loading and running on %s", name, backend)
        result = check_variant(bundle, backend, name)
        safe = [p for p in result.problems if p.safe]
        if apply and safe:
            chosen = dims or parse_dims(kind_of(bundle).default_fixed_dims, bundle.io)
            masks = any(p.kind == "mask" for p in safe)
            log.info("%s: applying %s (fixed shapes %s)", name, ", ".join(p.kind for p in safe), chosen)
            try:
                add_fixed(bundle, chosen, [name], transform=FiniteMasks() if masks else None,
                          transform_name="finite masks (-1e4)" if masks else "")
            except EdgetxError as e:
                result.problems.append(Problem("apply", f"the safe remedies could not be applied: {e}", "see the error"))
                results.append(result)
                continue
            bundle = Bundle.load(bundle.path)
            log.info("%s: running again with the remedies applied", name)
            again = check_variant(bundle, backend, name)
            applied = [Problem(p.kind, p.detail, p.remedy, True, True) for p in safe]
            again.problems = applied + [p for p in again.problems if not (p.safe and p.kind in {a.kind for a in applied})]
            result = again
        results.append(result)
    return results


def to_markdown(results: list[VariantPreflight], backend: str) -> str:
    """The pre-flight report as markdown: per variant, placement per op type, then problems and remedies."""
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = []
    for r in results:
        head = f"### {r.variant} ({r.precision}) on {backend}: {r.file}, {r.shapes} shapes"
        lines.append(head)
        if r.nodes:
            run = f", one run {r.run_seconds:.2f} s" if r.run_seconds is not None else ""
            lines.append(f"{r.on_backend}/{r.nodes} nodes on {r.provider}, {r.partitions} partition"
                         f"{'s' if r.partitions != 1 else ''}{run}.")
        if r.parity:
            lines.append(f"Parity {'pass' if r.parity['passed'] else 'FAIL'}: {r.parity['detail']}.")
        if r.error:
            lines.append(f"Error: {r.error.splitlines()[0][:400]}")
        if r.by_op:
            lines += ["", "| op type | nodes | on backend | on CPU | provider's reason |", "|---|---|---|---|---|"]
            for op, c in r.by_op.items():
                lines.append(f"| {op} | {c['total']} | {c['on_backend']} | {c['fallback']} | {cell(c['reason'] or '-')} |")
        if r.problems:
            lines += ["", "| problem | detail | remedy | |", "|---|---|---|---|"]
            for p in r.problems:
                state = "applied" if p.applied else ("safe: --apply" if p.safe else "needs a rebuild" if "edgetx build" in p.remedy else "")
                lines.append(f"| {p.kind} | {cell(p.detail)} | {cell(p.remedy)} | {state} |")
        else:
            lines.append("No problems found.")
        lines.append("")
    return "\n".join(lines)
