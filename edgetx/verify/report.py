"""What a parity run reports: checks per variant and backend, as JSON-ready dicts or a markdown table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Check:
    name: str
    passed: bool
    max_abs: float | None = None
    detail: str = ""
    tokens: list[int] | None = None  # greedy decode: [steps agreeing with PyTorch, steps]


@dataclass
class ParityReport:
    variant: str
    backend: str
    precision: str
    tolerance: dict
    checks: list[Check] = field(default_factory=list)
    skipped: str = ""  # why this variant was not run on this backend (e.g. it has no file in the backend's format)
    placement: dict | None = None  # where its nodes ran, for backends that report it (runtimes.vendor)
    tolerance_label: str = ""  # the bound in a few characters, as the model kind states it ("KL<=0.01")

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def max_abs(self) -> float:
        return max((c.max_abs for c in self.checks if c.max_abs is not None), default=0.0)

    def to_dict(self) -> dict:
        return {"variant": self.variant, "backend": self.backend, "precision": self.precision,
                "passed": self.passed, "max_abs": self.max_abs, "tolerance": self.tolerance,
                "tolerance_label": self.tolerance_label, "checks": [asdict(c) for c in self.checks],
                "skipped": self.skipped,
                **({"placement": self.placement} if self.placement else {})}


def to_markdown(reports: list[ParityReport | dict]) -> str:
    """A compact markdown table of parity reports (one row per check)."""
    lines = ["| variant | backend | check | max abs diff | tolerance | detail | result |", "|---|---|---|---|---|---|---|"]
    for report in reports:
        r = report.to_dict() if isinstance(report, ParityReport) else report
        for c in r["checks"]:
            diff = "-" if c["max_abs"] is None else f"{c['max_abs']:.2e}"
            lines.append(f"| {r['variant']} | {r['backend']} | {c['name']} | {diff} | {label_of(r)} "
                         f"| {c['detail']} | {'pass' if c['passed'] else 'FAIL'} |")
        if r.get("placement"):
            lines.append(f"| {r['variant']} | {r['backend']} | placement | - | - | {placement_text(r['placement'])} | - |")
    return "\n".join(lines) + "\n"


def label_of(report: dict) -> str:
    """A report's tolerance in a few characters: the kind's own label, else max |diff| or the gate's bounds."""
    tolerance = report.get("tolerance") or {}
    if report.get("tolerance_label"):
        return report["tolerance_label"]
    if tolerance.get("max_kld") is None:
        return f"{tolerance['max_abs']:.0e}" if tolerance.get("max_abs") is not None else "-"
    return f"KL<={tolerance['max_kld']:g}, cos>={tolerance['min_cosine']:g}"


def placement_text(summary: dict | None) -> str:
    from edgetx.runtimes.vendor import placement_text as text

    return text(summary)

