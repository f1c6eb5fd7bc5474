"""Checks of fixed-shape files (`FIXED_FORMAT` copies): a backend that loads a variant's fixed-shape copy (model_format
"onnx-fixed": NPUs, XNNPACK) cannot replay the golden I/O, whose shapes vary. Instead it runs the fixed
file and onnxruntime CPU runs the variant's dynamic file on the same inputs, built by the model kind from
the golden data at exactly the fixed dims, and the variant's tolerance judges.
"""

from __future__ import annotations

import numpy as np

from edgetx.bundle import Bundle
from edgetx.runtimes.backend import REFERENCE_BACKEND
from edgetx.runtimes.session import Session
from edgetx.verify import metrics
from edgetx.verify.report import Check
from edgetx.verify.tolerances import Tolerance

FIXED_CHECK = f"vs {REFERENCE_BACKEND} at fixed dims"
FIXED_SAMPLES = 3  # inputs per fixed-shape check (the golden text, shifted)


def fixed_feeds(bundle: Bundle, dynamic: Session, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Inputs of exactly `dims`, from the bundle's golden data (`dynamic` runs any past they need)."""
    return dynamic.kind.fixed_samples(bundle.golden(), dynamic, dims, 1)[0]


def compare_runs(kind, tolerance: Tolerance, want: dict[str, np.ndarray],
                 got: dict[str, np.ndarray]) -> tuple[bool, float, str]:
    """(passed, max |diff|, what was measured) of two runs on the same inputs under `tolerance`."""
    if not all(np.isfinite(v).all() for v in got.values()):
        return False, float("inf"), "the backend returned NaN or inf"
    diff = max(metrics.max_abs(want[k], got[k]) for k in want)
    ok, detail = kind.outputs_agree(tolerance, want, got)
    return bool(ok), diff, detail


def verify_fixed_shape(bundle: Bundle, session: Session, tolerance: Tolerance, dims: dict[str, int],
                       threads: int | None = None, note: str = "") -> list[Check]:
    """The backend's run of the variant's fixed file vs ort-cpu running its dynamic file, on the same
    inputs at `dims`, under the variant's tolerance (see the module docstring)."""
    reference = Session(bundle, variant=session.variant.name, backend=REFERENCE_BACKEND, threads=threads)
    checks = []
    for graph in (None, *session.variant.components):  # each graph of a model of several graphs on its own
        ours, theirs = (session, reference) if graph is None else (session.component(graph), reference.component(graph))
        samples = session.kind.fixed_samples(bundle.golden(), theirs, dims, FIXED_SAMPLES)
        wants = [theirs.run(feeds) for feeds in samples]
        gots = [ours.run(feeds) for feeds in samples]
        want = {k: np.concatenate([w[k] for w in wants]) for k in wants[0]}
        got = {k: np.concatenate([g[k] for g in gots]) for k in wants[0]}
        ok, diff, detail = compare_runs(session.kind, tolerance, want, got)
        shape = ",".join(f"{k}={v}" for k, v in dims.items())
        checks.append(Check(FIXED_CHECK + (f" ({graph})" if graph else ""), ok, diff,
                            f"{shape}, {len(samples)} inputs: {detail}{note}"))
    reference.close()
    return checks
