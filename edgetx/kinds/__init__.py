"""Model kinds: what a kind's golden I/O, parity checks, gate metrics, calibration feeds, timing loop,
report columns and runtime helpers are (edgetx.kinds.base). The pipeline, gates, parity, bench and report
ask the bundle's kind; none of them tests which kind it is. A new kind is one module registering a
`ModelKind` subclass, its exporter, and its tests.
"""

from edgetx.kinds.base import BenchTable, ModelKind, ReportAxes, get_kind, known_kinds, register_kind, require_helper
from edgetx.kinds import causal_lm, classifier, encoder, seq2seq, speech, vision, zero_shot  # noqa: E402,F401  (register the built-in kinds)

__all__ = ["BenchTable", "ModelKind", "ReportAxes", "get_kind", "known_kinds", "register_kind", "require_helper"]


def kind_of(bundle) -> ModelKind:
    """The kind of a loaded bundle (from its manifest's model.kind)."""
    return get_kind(bundle.model.get("kind"), bundle.path / "manifest.json")
