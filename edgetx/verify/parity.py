"""Parity: does a variant, on a backend, give the answers PyTorch gave at export time?

The checks are the model kind's (edgetx.kinds: for a causal LM prefill logits, greedy decoding with the
KV cache, cache == recompute, a padded batch and each row alone; for an encoder hidden states, pooled
embeddings and each row alone), run against the golden I/O stored in the bundle through the same
`Session` that apps use. Torch-free.

Backends that load fixed-shape files (model_format "onnx-fixed": NPUs, XNNPACK) cannot replay the
golden I/O, whose shapes vary. For them the check is "vs ort-cpu at fixed dims" (edgetx.verify.fixed): the
backend runs the variant's fixed file and onnxruntime CPU runs the variant's dynamic file on the same
inputs at the bundle's fixed dims, judged by the variant's tolerance. A backend that computes float graphs
at lower precision says so (`Capabilities.float_precision`) and its fp32 variants are judged by that
precision's tolerance. Backends whose sessions report where nodes ran (`placement`) have it recorded in
the report.
"""

from __future__ import annotations

import gc

import numpy as np

from edgetx.bundle import Bundle
from edgetx.errors import BackendError, BundleError, EdgetxError
from edgetx.kinds import kind_of
from edgetx.runtimes.backend import REFERENCE_BACKEND, get_backend, list_backends
from edgetx.runtimes.session import Session
from edgetx.verify import metrics
from edgetx.verify.fixed import verify_fixed_shape
from edgetx.verify.report import Check, ParityReport
from edgetx.verify.tolerances import FP32_MAX_RELATIVE_SPREAD, QUANTIZED, Tolerance, from_spread, tolerance_for


class ExportMismatch(EdgetxError):
    """The fp32 graph differs from PyTorch by more than rounding, on every onnxruntime configuration."""

def golden_feeds(session: Session, golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The kind's representative golden input (a decoder's prompt, an encoder's batch) as graph inputs."""
    return session.kind.golden_feeds(session.inputs, golden)


# The kernel configurations whose disagreement with PyTorch defines the fp32 spread.
SPREAD_CONFIGURATIONS = {"1 thread": {"threads": 1}, "2 threads": {"threads": 2},
                         "no graph optimizations": {"threads": 1, "graph_optimization": "disabled"}}


def measure_fp32_tolerance(bundle: Bundle, variant: str = "fp32") -> Tolerance:
    """Measure the spread between PyTorch and onnxruntime CPU across kernel configurations,
    and turn it into the variant's budget (see edgetx.verify.tolerances)."""
    golden = bundle.golden()
    spread = scale = 0.0
    for options in SPREAD_CONFIGURATIONS.values():
        session = Session(bundle, variant=variant, backend=REFERENCE_BACKEND, **options)
        want, got = session.kind.primary_output(session, golden)
        spread, scale = max(spread, metrics.max_abs(want, got)), max(scale, float(np.abs(want).max(initial=0.0)))
        # one session at a time: rebinding `session` would build the next while this one still holds its
        # weights (a 2.35 GB model measured 7.5 GB peak RSS in this stage that way)
        del session, want, got
        gc.collect()
    if spread > FP32_MAX_RELATIVE_SPREAD * scale:  # not rounding: the graph computes something else
        raise ExportMismatch(f"the exported graph does not reproduce PyTorch, so no bundle was written: fp32 differs "
                             f"from PyTorch by {spread:.3g} ({spread / max(scale, 1e-30):.1e} of the outputs' largest "
                             f"value {scale:.3g}) on every onnxruntime configuration; correct fp32 graphs agree within "
                             f"{FP32_MAX_RELATIVE_SPREAD:g} of it (about 1e-6 measured), so this is not rounding")
    return from_spread("fp32", spread, list(SPREAD_CONFIGURATIONS))


def _backend_tolerance(plugin, precision: str, recorded: dict | None) -> tuple[Tolerance, str]:
    """The variant's tolerance, or the one of the precision the backend really computes floats in."""
    tolerance = tolerance_for(precision, recorded)
    computes = plugin.capabilities.float_precision
    if precision == "fp32" and computes in QUANTIZED:
        return QUANTIZED[computes], f"; {plugin.name} computes float graphs as {computes}: judged by the {computes} tolerance"
    return tolerance, ""


def verify(bundle: Bundle, backend: str = REFERENCE_BACKEND, variants: list[str] | None = None,
           threads: int | None = None) -> list[ParityReport]:
    """Check every (or the named) variant of `bundle` on `backend` against its golden I/O (or, for a
    backend that loads fixed-shape files, against ort-cpu at the bundle's fixed dims)."""
    kind = kind_of(bundle)
    plugin = get_backend(backend)
    if plugin.capabilities.kinds and kind.name not in plugin.capabilities.kinds:
        raise BackendError(f"{backend} runs {', '.join(plugin.capabilities.kinds)} models only; {bundle.path} is "
                           f"{kind.described_as}")
    golden = bundle.golden()
    reports = []
    for name in variants or list(bundle.variants):
        variant = bundle.variant(name)
        tolerance, note = _backend_tolerance(plugin, variant.precision, variant.tolerance)
        session = Session(bundle, variant=name, backend=backend, threads=threads)
        report = ParityReport(name, backend, variant.precision, tolerance.to_dict(),
                              tolerance_label=kind.tolerance_label(tolerance.to_dict()))
        if plugin.capabilities.fixed_shapes:
            dims = (variant.fixed_shape or {}).get("dims")
            if not dims:
                raise BundleError(f"variant {name!r} has a fixed-shape file but no recorded dims (fixed_shape.dims)")
            report.checks = verify_fixed_shape(bundle, session, tolerance, dims, threads, note)
        else:
            report.checks = kind.parity_checks(session, golden, tolerance)
        report.placement = _placement(plugin, session)
        reports.append(report)
        session.close()  # before the next variant's session loads: one model's weights in memory at a time
        del session
        gc.collect()
    return reports


def _placement(plugin, session: Session) -> dict | None:
    """Node placement of a session whose backend reports it (see edgetx.runtimes.vendor), else None."""
    raw, capabilities = session.placement, plugin.capabilities
    if not raw or not capabilities.provider or not capabilities.reports_placement:
        return None
    from edgetx.runtimes.vendor import summarize_placement

    summary = summarize_placement(raw, capabilities.provider)
    summary.pop("by_op", None)  # the per-op detail is `edgetx preflight`'s; the matrix keeps the counts
    summary["messages"] = summary["messages"][:20]
    return summary


def available_backends() -> list[str]:
    return [name for name, backend in sorted(list_backends().items()) if backend.availability().available]


def verify_matrix(bundle: Bundle, backends: list[str] | None = None, threads: int | None = None,
                  variants: list[str] | None = None) -> list[ParityReport]:
    """Every (or the named) variant on every available (or named) backend. A variant without a file
    in a backend's format (e.g. no .ort yet) gets a skipped report saying so; so does a model too large
    for a backend, unless the backend was named."""
    reports = []
    parameters = bundle.model.get("parameters") or 0
    for backend in backends or available_backends():
        plugin = get_backend(backend)
        runnable = []
        for name in variants or list(bundle.variants):
            variant = bundle.variant(name)
            skipped = ""
            model_format, limit = plugin.capabilities.model_format, plugin.capabilities.max_parameters
            missing_graphs = [g for g in variant.components if model_format not in variant.component_formats.get(g, {})]
            kinds = plugin.capabilities.kinds
            if kinds and bundle.model.get("kind") not in kinds:
                skipped = f"{backend} runs {', '.join(kinds)} models only"
            elif model_format != "onnx" and missing_graphs and not plugin.capabilities.fixed_shapes:
                skipped = f"no {model_format} file: edgetx does not make one for a model of several graphs yet"
            elif model_format != "onnx" and (model_format not in (variant.formats or {}) or missing_graphs):
                how = "fixed --shape ..." if plugin.capabilities.fixed_shapes else model_format
                skipped = f"no {model_format} file (edgetx convert {bundle.path} --to {how})"
            elif limit and parameters > limit and not backends:
                skipped = (f"{parameters / 1e6:.0f}M parameters is beyond what {backend} runs in reasonable time "
                           f"here ({limit / 1e6:.0f}M); name it with --backend {backend} to run anyway")
            if skipped:
                report = ParityReport(name, backend, variant.precision, {})
                report.skipped = skipped
                reports.append(report)
            else:
                runnable.append(name)
        for name in runnable:
            try:
                reports += verify(bundle, backend=backend, variants=[name], threads=threads)
            except BackendError as e:  # a stack that cannot load or run this variant: a row, not a crash
                variant = bundle.variant(name)
                tolerance = tolerance_for(variant.precision, variant.tolerance)
                report = ParityReport(name, backend, variant.precision, tolerance.to_dict())
                text = " ".join(str(e).split())
                text = text if len(text) <= 500 else f"{text[:180]} ... {text[-300:]}"  # the cause is often last
                if backends:  # asked for by name: it must run
                    report.checks = [Check("load and run", False, None, text)]
                else:  # a whole-matrix run: a graph this stack cannot take (e.g. OpenVINO and onnxruntime's
                    # CPU fusions) is reported as not runnable there, apart from wrong answers
                    report.skipped = f"{backend} cannot run {name}: {text}"
                reports.append(report)
    return reports
