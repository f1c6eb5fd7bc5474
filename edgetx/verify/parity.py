"""Parity: does a variant, on a backend, give the answers PyTorch gave at export time?

For a causal LM, against the golden I/O stored in the bundle:
- prefill: logits at every prompt position within the variant's tolerance;
- greedy decode: the variant's own greedy decoding, with its KV cache, picks the same tokens as
  PyTorch did over every golden decode step, with logits within tolerance (also reported:
  top-1 agreement and KL divergence of the step distributions);
- cache == recompute: the cached decode logits equal one full pass over the same tokens;
- padded batch: a left-padded batch gives each row's logits within tolerance;
- padding invariance: each row run alone, unpadded, gives what it gave inside the batch.
For an encoder: hidden states and pooled embeddings (cosine) of a padded batch of real
sentences, and padding invariance (each sentence alone gives the batch's embedding).
Torch-free: runs through the same `Session` that apps use.

Backends that load fixed-shape files (model_format "onnx-fixed": NPUs, XNNPACK) cannot replay the
golden I/O, whose shapes vary. For them the check is "vs ort-cpu at fixed dims": the backend runs
the variant's fixed file and onnxruntime CPU runs the variant's dynamic file on the same inputs at
the bundle's fixed dims (fixed_shape.fixed_feeds), judged by the variant's tolerance. A backend
that computes float graphs at lower precision says so (`computes_float_as = "fp16"`) and its fp32
variants are judged by that precision's tolerance. Backends whose sessions report where nodes ran
(`placement`) have it recorded in the report.
"""

from __future__ import annotations

import numpy as np

from edgetx.verify import metrics
from edgetx.bundle import Bundle
from edgetx.errors import BackendError, BundleError
from edgetx.runtimes.base import get_backend, list_backends
from edgetx.runtimes.feeds import causal_feeds, empty_cache, encoder_feeds, next_cache
from edgetx.runtimes.pooling import pool
from edgetx.runtimes.session import Session
from edgetx.verify.fixed import verify_fixed_shape
from edgetx.verify.report import Check, ParityReport
from edgetx.verify.tolerances import QUANTIZED, Tolerance, from_spread, tolerance_for



def golden_feeds(session: Session, golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The golden prefill (decoders) or batch (encoders) as graph inputs."""
    if session.model.get("kind") == "encoder":
        return encoder_feeds(session.inputs, golden, "batch")
    return causal_feeds(session.inputs, golden["prefill.input_ids"])


def verify_causal_lm(session: Session, golden: dict[str, np.ndarray], tolerance: Tolerance) -> list[Check]:
    """The causal-LM checks of the module docstring, on one loaded session. Logits are compared
    under the variant's tolerance: max-abs for fp32, KL divergence + top-1 for quantized ones."""
    compare = tolerance.compare_logits
    checks: list[Check] = []
    prompt = golden["prefill.input_ids"]
    S = prompt.shape[1]
    out = session.run(causal_feeds(session.inputs, prompt))
    ok, diff, detail = compare(golden["prefill.logits"], out["logits"])
    checks.append(Check("prefill", ok, diff, f"{S} prompt positions" + (f"; {detail}" if detail else "")))

    # Greedy decoding with the variant's own choices, feeding its own cache back.
    want_tokens, want_logits = golden["decode.tokens"], golden["decode.logits"]
    cache = next_cache(out, empty_cache(session.inputs, batch=1))
    token, got_tokens, step_logits = int(out["logits"][0, -1].argmax()), [], []
    for _ in range(len(want_tokens)):
        got_tokens.append(token)
        out = session.run(causal_feeds(session.inputs, np.array([[token]], dtype=np.int64), cache=cache))
        cache = next_cache(out, cache)
        step_logits.append(out["logits"][0, -1])
        token = int(out["logits"][0, -1].argmax())
    agreed, first_mismatch = metrics.token_agreement(want_tokens, got_tokens)
    matched = first_mismatch is None and token == int(want_logits[-1].argmax())
    steps = np.stack(step_logits)
    if agreed:
        ok, diff, detail = compare(want_logits[:agreed], steps[:agreed])
        kld = float(metrics.kl_divergence(want_logits[:agreed], steps[:agreed]).max())
    else:
        ok, diff, detail, kld = False, float("inf"), "", float("inf")
    summary = (f"{len(want_tokens)} steps, all tokens identical" if matched else
               f"tokens agree for {agreed} of {len(want_tokens)} steps") + f"; max KL {kld:.1e}"
    ok = ok and (matched or not tolerance.greedy_must_match)
    checks.append(Check("greedy decode", ok, diff, summary, [agreed if not matched else len(want_tokens),
                                                             len(want_tokens)]))

    # The cached steps must equal one pass over prompt + fed tokens without a cache.
    full = np.concatenate([prompt, np.array([got_tokens], dtype=np.int64)], axis=1)
    out = session.run(causal_feeds(session.inputs, full))
    ok, diff, detail = compare(out["logits"][0, S:], steps)
    checks.append(Check("cache == recompute", ok, diff, f"{len(got_tokens)} positions" + (f"; {detail}" if detail else "")))

    if "padded.input_ids" in golden:
        ids, mask, positions = golden["padded.input_ids"], golden["padded.attention_mask"], golden["padded.position_ids"]
        batch = session.run(causal_feeds(session.inputs, ids, mask, positions))["logits"][:, -1]
        ok, diff, _ = compare(golden["padded.logits"], batch)
        rows, width = ids.shape
        checks.append(Check("padded batch", ok, diff, f"{rows} rows left-padded to {width}"))
        alone = [session.run(causal_feeds(session.inputs, ids[r : r + 1, mask[r].astype(bool)]))["logits"][0, -1]
                 for r in range(rows)]
        ok, diff, _ = compare(batch, np.stack(alone))
        checks.append(Check("padding invariance", ok, diff, f"{rows} rows alone vs in the padded batch"))
    return checks


def verify_encoder(session: Session, golden: dict[str, np.ndarray], tolerance: Tolerance) -> list[Check]:
    """Hidden states and pooled embeddings of a padded batch, and each row alone (padding invariance)."""
    names = [s["name"] for s in session.inputs]
    feeds = encoder_feeds(session.inputs, golden, "batch")
    mask = feeds["attention_mask"].astype(bool)
    hidden = session.run(feeds, ["last_hidden_state"])["last_hidden_state"]
    diff = metrics.max_abs(golden["batch.last_hidden_state"][mask], hidden[mask])
    checks = [Check("hidden states", diff <= tolerance.max_abs, diff, f"{mask.shape[0]} sentences, real tokens")]
    pooling = session.model.get("pooling", {})
    embeddings = pool(hidden, feeds["attention_mask"], pooling)
    cosines = metrics.cosine(golden["batch.embeddings"], embeddings)
    cosine, mean = float(cosines.min()), float(cosines.mean())
    diff = metrics.max_abs(golden["batch.embeddings"], embeddings)
    ok = cosine >= tolerance.min_cosine and diff <= tolerance.max_abs and mean >= (tolerance.min_cosine_mean or 0)
    checks.append(Check("embeddings", ok, diff, f"cosine min {cosine:.7f} mean {mean:.7f} "
                        f"({pooling.get('mode', 'mean')} pooling{', normalized' if pooling.get('normalize') else ''})"))
    rows = range(min(4, mask.shape[0]))
    alone = []
    for row in rows:
        length = int(mask[row].sum())
        single = {n: feeds[n][row : row + 1, :length] for n in names}
        out = session.run(single, ["last_hidden_state"])["last_hidden_state"]
        alone.append(pool(out, single["attention_mask"], pooling)[0])
    diff = metrics.max_abs(embeddings[list(rows)], np.stack(alone))
    checks.append(Check("padding invariance", diff <= tolerance.max_abs, diff,
                        f"{len(rows)} rows alone vs in the padded batch"))
    return checks


_CHECKS = {"causal-lm": verify_causal_lm, "encoder": verify_encoder}
# The kernel configurations whose disagreement with PyTorch defines the fp32 spread.
SPREAD_CONFIGURATIONS = {"1 thread": {"threads": 1}, "2 threads": {"threads": 2},
                         "no graph optimizations": {"threads": 1, "graph_optimization": "disabled"}}


def _primary_output(session: Session, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(golden, computed) for the main output of the golden prefill / batch, real tokens only."""
    if session.model.get("kind") == "encoder":
        feeds = encoder_feeds(session.inputs, golden, "batch")
        mask = feeds["attention_mask"].astype(bool)
        hidden = session.run(feeds, ["last_hidden_state"])["last_hidden_state"]
        return golden["batch.last_hidden_state"][mask], hidden[mask]
    return golden["prefill.logits"], session.run(golden_feeds(session, golden))["logits"]


def measure_fp32_tolerance(bundle: Bundle, variant: str = "fp32") -> Tolerance:
    """Measure the spread between PyTorch and onnxruntime CPU across kernel configurations,
    and turn it into the variant's budget (see edgetx.verify.tolerances)."""
    golden = bundle.golden()
    spread = 0.0
    for options in SPREAD_CONFIGURATIONS.values():
        session = Session(bundle, variant=variant, backend="ort-cpu", **options)
        spread = max(spread, metrics.max_abs(*_primary_output(session, golden)))
    return from_spread("fp32", spread, list(SPREAD_CONFIGURATIONS))



def _backend_tolerance(plugin, precision: str, recorded: dict | None) -> tuple[Tolerance, str]:
    """The variant's tolerance, or the one of the precision the backend really computes floats in."""
    tolerance = tolerance_for(precision, recorded)
    computes = getattr(plugin, "computes_float_as", None)
    if computes and precision == "fp32" and computes in QUANTIZED:
        return QUANTIZED[computes], f"; {plugin.name} computes float graphs as {computes}: judged by the {computes} tolerance"
    return tolerance, ""



def verify(bundle: Bundle, backend: str = "ort-cpu", variants: list[str] | None = None,
           threads: int | None = None) -> list[ParityReport]:
    """Check every (or the named) variant of `bundle` on `backend` against its golden I/O (or, for a
    backend that loads fixed-shape files, against ort-cpu at the bundle's fixed dims)."""
    from edgetx.verify.fixed import FIXED_FORMAT

    kind = bundle.model.get("kind")
    if kind not in _CHECKS:
        raise BundleError(f"{bundle.path}: parity for model kind {kind!r} is not implemented")
    plugin = get_backend(backend)
    golden = bundle.golden()
    reports = []
    for name in variants or list(bundle.variants):
        variant = bundle.variant(name)
        entry = bundle.manifest["variants"][name]
        tolerance, note = _backend_tolerance(plugin, variant.precision, entry.get("tolerance"))
        session = Session(bundle, variant=name, backend=backend, threads=threads)
        report = ParityReport(name, backend, variant.precision, tolerance.to_dict())
        if plugin.model_format == FIXED_FORMAT:
            dims = (entry.get("fixed_shape") or {}).get("dims")
            if not dims:
                raise BundleError(f"variant {name!r} has a fixed-shape file but no recorded dims (fixed_shape.dims)")
            report.checks = verify_fixed_shape(bundle, session, tolerance, dims, threads, note)
        else:
            report.checks = _CHECKS[kind](session, golden, tolerance)
        report.placement = _placement(plugin, session)
        reports.append(report)
    return reports


def _placement(plugin, session: Session) -> dict | None:
    """Node placement of a session whose backend reports it (see edgetx.runtimes.vendor), else None."""
    raw = getattr(getattr(session, "_session", None), "placement", None)
    provider = getattr(plugin, "provider", None)
    if not raw or not provider or not getattr(plugin, "reports_placement", False):
        return None
    from edgetx.runtimes.vendor import summarize_placement

    summary = summarize_placement(raw, provider)
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
            if plugin.model_format != "onnx" and plugin.model_format not in (variant.formats or {}):
                how = "fixed --shape ..." if plugin.model_format == "onnx-fixed" else plugin.model_format
                skipped = f"no {plugin.model_format} file (edgetx convert {bundle.path} --to {how})"
            elif plugin.max_parameters and parameters > plugin.max_parameters and not backends:
                skipped = (f"{parameters / 1e6:.0f}M parameters is beyond what {backend} runs in reasonable time "
                           f"here ({plugin.max_parameters / 1e6:.0f}M); name it with --backend {backend} to run anyway")
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
                tolerance = tolerance_for(variant.precision, bundle.manifest["variants"][name].get("tolerance"))
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
