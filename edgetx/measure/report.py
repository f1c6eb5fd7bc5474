"""`edgetx report`: every variant of a bundle as accuracy x latency x size, with the Pareto front.

Accuracy is the variant's gate metric, measured at build time on the bundle's held-out data
against the fp32 graph: bits per token of held-out text for decoders (lower is better; the fp32
point is the reference itself) and mean embedding cosine for encoders (higher is better). Latency
comes from `edgetx bench` results stored in the manifest: decode ms per token for decoders, p50 ms
of the smallest batch for encoders. A variant is on the front when no other is at least as
accurate and as fast while better on one of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetx.bundle import Bundle
from edgetx.errors import EdgetxError
from edgetx.kinds import ReportAxes, kind_of
from edgetx.runtimes.backend import REFERENCE_BACKEND


@dataclass
class Point:
    variant: str
    precision: str
    size_mb: float
    accuracy: float
    latency_ms: float
    gate: str  # "reference", "passed", or what it missed by
    extra: dict  # more figures for the table (TTFT, throughput, top-1, ...)
    pareto: bool = False


def axes_for(bundle: Bundle) -> ReportAxes:
    return kind_of(bundle).report_axes(gated=any("gate" in r for r in _gate_results(bundle).values()))


def _gate_results(bundle: Bundle) -> dict:
    return bundle.manifest.quantization_results


def _pick_bench(bundle: Bundle, backend: str, threads: str | None) -> tuple[dict[str, dict], str]:
    """The stored bench result of every variant for one thread setting that all of them have."""
    stored = bundle.manifest.bench_results(backend)
    settings = {str(r["threads"]) for r in stored}
    candidates = [threads] if threads else ["default"] + sorted(settings - {"default"}, key=lambda s: int(s))
    for setting in candidates:
        chosen = {r["variant"]: r for r in stored if str(r["threads"]) == setting}
        if set(bundle.variants) <= set(chosen):
            return chosen, setting
    have = ", ".join(sorted({f"{r['variant']}@threads={r['threads']}" for r in stored})) or "none"
    raise EdgetxError(f"{bundle.path}: no stored {backend} bench results for every variant "
                      f"{'at --threads ' + threads if threads else 'at one thread setting'} (have: {have}); "
                      f"run `edgetx bench {bundle.path}{' --threads ' + threads if threads else ''}` first, "
                      "or let `edgetx report` run it (without --no-bench)")


def _accuracy(bundle: Bundle, name: str) -> tuple[float, str, dict]:
    """(accuracy value, gate status, extra figures) of one variant, as its model kind measures accuracy."""
    results = _gate_results(bundle)
    record = results.get(name)
    gated = [r["gate"] for r in results.values() if "gate" in r]
    parity = bundle.variant(name).parity
    value, extra = kind_of(bundle).report_accuracy(record["gate"] if record else None, gated, parity)
    if record is None:
        return value, "reference", extra
    status = "passed" if record.get("gate_passed") else "missed: " + "; ".join(record.get("missed_by", []))
    return value, status, extra


def collect(bundle: Bundle, backend: str = REFERENCE_BACKEND, threads: str | None = None) -> tuple[list[Point], str]:
    """One point per variant (and the thread setting used), with the Pareto front marked."""
    bench, setting = _pick_bench(bundle, backend, threads)
    kind = kind_of(bundle)
    points = []
    for name, variant in bundle.variants.items():
        accuracy, gate, extra = _accuracy(bundle, name)
        latency, timing = kind.report_latency(bench[name])
        points.append(Point(name, variant.precision, (variant.bytes or 0) / 1e6, accuracy, latency, gate,
                            {**extra, **timing}))
    mark_pareto(points, axes_for(bundle).higher_is_better)
    return points, setting


def mark_pareto(points: list[Point], higher_is_better: bool) -> None:
    """Mark the points no other point dominates (faster-or-equal and at-least-as-accurate, one strictly)."""
    sign = 1 if higher_is_better else -1
    for p in points:
        p.pareto = not any(
            q is not p and q.latency_ms <= p.latency_ms and sign * q.accuracy >= sign * p.accuracy
            and (q.latency_ms < p.latency_ms or sign * q.accuracy > sign * p.accuracy) for q in points)


def plot(points: list[Point], axes: ReportAxes, title: str, path: Path) -> None:
    """Accuracy vs latency, marker area proportional to file size, the front joined by a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgetxError("edgetx report draws with matplotlib: pip install 'edgetx[report]'") from None
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    biggest = max(p.size_mb for p in points)
    for i, p in enumerate(sorted(points, key=lambda p: p.latency_ms)):
        ax.scatter(p.latency_ms, p.accuracy, s=80 + 1400 * p.size_mb / biggest, alpha=0.55,
                   color="tab:blue" if p.pareto else "tab:gray", edgecolors="black", linewidths=0.8, zorder=3)
        ax.annotate(f"{p.variant}\n{p.size_mb:.1f} MB", (p.latency_ms, p.accuracy), textcoords="offset points",
                    xytext=(14, 10) if i % 2 == 0 else (14, -30), fontsize=9)  # neighbours alternate above/below
    front = sorted((p for p in points if p.pareto), key=lambda p: p.latency_ms)
    if len(front) > 1:
        ax.plot([p.latency_ms for p in front], [p.accuracy for p in front], "--", color="tab:blue",
                label="Pareto front", zorder=2)
        ax.legend(loc="best")
    ax.set_xlabel(axes.latency)
    ax.set_ylabel(axes.accuracy)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.25, y=0.25)
    ax.set_xlim(left=0)
    if not axes.higher_is_better:
        ax.invert_yaxis()  # better is always up and to the left
    ax.text(0.01, 0.01, "better: up and left; marker area ~ file size", transform=ax.transAxes, fontsize=8,
            color="dimgray", va="bottom")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(bundle: Bundle, points: list[Point], axes: ReportAxes, setting: str, backend: str,
             memory_bound: list[dict], image: str) -> str:
    model = bundle.model
    extra_cols = list(dict.fromkeys(k for p in points for k in p.extra))
    lines = [f"# {model.get('name', bundle.path.name)}: variants", "",
             f"{model.get('kind')} model, {model.get('parameters', 0) / 1e6:.1f}M parameters. "
             f"Latency on `{backend}` with threads={setting} (from `edgetx bench`, stored in the manifest); "
             "accuracy from the build's quantization gates on held-out data.", "",
             f"![accuracy vs latency]({image})", "",
             f"| variant | precision | MB | {axes.accuracy} | {axes.latency} | "
             + " | ".join(extra_cols) + " | gate | parity | Pareto |",
             "|" + "---|" * (8 + len(extra_cols))]
    for p in points:
        parity = bundle.variant(p.variant).parity or {}
        verdict = "-" if not parity else ("pass" if parity.get("passed") else "FAIL") + f" ({parity.get('backend')})"
        lines.append(f"| {p.variant} | {p.precision} | {p.size_mb:.1f} | {_fmt(p.accuracy)} | {p.latency_ms:.2f} | "
                     + " | ".join(_fmt(p.extra.get(c, "-")) for c in extra_cols)
                     + f" | {p.gate} | {verdict} | {'yes' if p.pareto else ''} |")
    if memory_bound:
        lines += ["", "## Memory-bandwidth bound", "",
                  "A decode step reads the weights and the KV cache once; at this machine's measured read "
                  "bandwidth that sets a floor. Small models partly fit in cache, so they can approach or beat it.", "",
                  "| variant | threads | weights MB | KV MB | read GB/s | floor ms | decode p50 ms | x floor |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in memory_bound:
            if r.get("bound_ms") is not None:
                lines.append(f"| {r['variant']} | {r['threads']} | {r['weight_mb']:.1f} | {r['kv_mb']:.1f} | "
                             f"{r['bandwidth_gb_s']:.1f} | {r['bound_ms']:.2f} | {r['decode_ms']:.2f} | "
                             f"{r['x_bound']:.1f} |")
    on_front = [p.variant for p in points if p.pareto]
    lines += ["", f"On the Pareto front: {', '.join(on_front)}. Dominated variants are slower *and* less "
              "accurate than one on the front; keep them only for a backend that needs them.", ""]
    return "\n".join(lines)


def write_report(bundle: Bundle, out_dir: Path | None = None, backend: str = REFERENCE_BACKEND, threads: str | None = None,
                 run_missing_bench: bool = True) -> tuple[Path, Path, list[Point]]:
    """Write report.md and pareto.png (into the bundle folder unless `out_dir`); bench first if needed."""
    try:
        points, setting = collect(bundle, backend, threads)
    except EdgetxError:
        if not run_missing_bench:
            raise
        _bench_missing(bundle, backend, threads)
        points, setting = collect(bundle, backend, threads)
    axes = axes_for(bundle)
    out_dir = Path(out_dir or bundle.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    image, text = out_dir / "pareto.png", out_dir / "report.md"
    title = f"{bundle.path.name} ({bundle.model.get('name', '?')}) on {backend}, threads={setting}"
    stored = [r for r in bundle.manifest.bench_results(backend, setting) if "memory_bound" in r]
    partial_image, partial_text = image.with_suffix(".png.partial"), text.with_suffix(".md.partial")
    plot(points, axes, title, partial_image)
    partial_text.write_text(markdown(bundle, points, axes, setting, backend,
                                     [r["memory_bound"] for r in stored], image.name))
    partial_image.replace(image)
    partial_text.replace(text)
    return text, image, points


def _bench_missing(bundle: Bundle, backend: str, threads: str | None) -> None:
    """Bench the variants that have no stored result at the wanted thread setting, and store them."""
    from edgetx.measure.bench import BenchConfig, bench

    setting = threads or "default"
    have = {r["variant"] for r in bundle.manifest.bench_results(backend, setting)}
    missing = [name for name in bundle.variants if name not in have]
    count = None if setting == "default" else int(setting)
    results = bench(bundle, missing, backend, (count,), BenchConfig())
    bundle.update_manifest("bench", bundle.manifest.with_bench(results))
