"""Vision kinds: image classification (`logits` per image, labels by class id in `model.labels`) and image
encoders (`embeddings` per image: a projected `image_embeds`, a `pooler_output` or the CLS token, named in
`model.embedding_from`). One graph input, `pixel_values` (batch, 3, H, W) float32, H and W fixed; images are
turned into it by edgetx.runtimes.image, torch-free, as the model's preprocessor config asks.

Golden I/O (captured by edgetx.exporters.hf_vision): real photos pre-processed by edgetx.runtimes.image
(`batch.pixel_values`, exactly what the runtime feeds), PyTorch's `batch.{output}` and each image run alone
(`batch.alone.{output}`). Parity: classification as the text heads (logits within the fp32 tolerance, argmax
labels; edgetx.kinds.classifier), embeddings as the encoder's (max |diff| and cosine; edgetx.kinds.encoder),
and every image alone. Gates on held-out photos, crops and flips: top-1 label agreement + mean KL, or
embedding cosine mean/min. Bench: images/s per batch size.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from edgetx.errors import BackendError, InputError
from edgetx.kinds.base import (BenchTable, ModelKind, ReportAxes, percentiles, register_kind, stored_batch,
                               timed_ms)
from edgetx.kinds.classifier import (label_accuracy, label_checks, label_gate, label_gate_misses, label_tolerance_label,
                                     labelled, logits_agree, softmax)
from edgetx.kinds.encoder import cosine_gate, embedding_check
from edgetx.verify.report import Check

INPUT = "pixel_values"
# model.embedding_from, most preferred first; "feature_map_mean": a conv backbone's last feature map averaged over H, W
EMBEDDING_SOURCES = ("image_embeds", "pooler_output", "cls_token", "feature_map_mean")


class _Vision(ModelKind):
    """What both vision kinds share: the pixel_values contract, fixed-shape samples, calibration, bench."""

    output: ClassVar[str] = ""  # the graph's one output
    unit_of_output: ClassVar[str] = ""  # what its second axis counts
    unit: ClassVar[str] = "images"
    golden_input = "batch"
    default_fixed_dims = "batch=1"
    score = "one golden batch of images, median ms"

    def io_problem(self, inputs: list[dict], outputs: list[dict]) -> str | None:
        """One float32 input `pixel_values` (batch, 3, H, W) with H and W fixed; one output of rank 2."""
        shape = inputs[0].get("shape", []) if len(inputs) == 1 else []
        if [s["name"] for s in inputs] != [INPUT] or inputs[0].get("dtype") != "float32" or len(shape) != 4 \
                or shape[1] != 3 or not all(isinstance(d, int) for d in shape[2:]):
            return f"{self.described_as} takes one input, '{INPUT}' float32 of shape (batch, 3, H, W) with H, W fixed"
        if [o["name"] for o in outputs] != [self.output] or len(outputs[0]["shape"]) != 2:
            return f"{self.described_as} returns one output, '{self.output}', of rank 2 (batch, {self.unit_of_output})"
        return None

    def _rows_alone(self, session: Any, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(PyTorch's answer for each image run alone, the session's answer for each image run alone)."""
        images = golden[f"{self.golden_input}.{INPUT}"]
        want = golden[f"{self.golden_input}.alone.{self.output}"]
        got = np.concatenate([session.run({INPUT: images[row : row + 1]}, [self.output])[self.output]
                              for row in range(len(want))])
        return want, got

    # --- fixed shapes --------------------------------------------------------------------------------

    def fixed_samples(self, golden: dict[str, np.ndarray], reference: Any, dims: dict[str, int],
                      count: int) -> list[dict[str, np.ndarray]]:
        """`batch` golden images per sample, starting one image further each time."""
        images = golden[f"{self.golden_input}.{INPUT}"]
        batch = dims.get("batch", 1)
        return [{INPUT: np.resize(np.roll(images, -shift, axis=0), (batch, *images.shape[1:])).astype(np.float32)}
                for shift in range(count)]

    # --- timing --------------------------------------------------------------------------------------

    def bench(self, session: Any, config: Any) -> dict:
        """Latency percentiles and images/s per batch size, on the golden photos (repeated to fill a batch)."""
        images = session.bundle.golden()[f"{self.golden_input}.{INPUT}"]
        rows = []
        for batch in config.batch_sizes:
            feeds = {INPUT: np.resize(images, (batch, *images.shape[1:])).astype(np.float32)}
            stats = percentiles(timed_ms(lambda: session.run(feeds), config.warmup, config.repeats))
            rows.append({"batch": batch, **stats, "images_per_s": batch * 1e3 / stats["p50_ms"]})
        return {"batches": rows}

    def bench_rows(self, results: list[dict]) -> list[BenchTable]:
        rows = [(r["variant"], r["backend"], str(r["threads"]), f"{r['file_mb']:.1f}", f"{r['load_ms']:.0f}",
                 str(b["batch"]), f"{b['p50_ms']:.2f} / {b['p90_ms']:.2f} / {b['p99_ms']:.2f}",
                 f"{b['images_per_s']:.1f}") for r in results for b in r["batches"]]
        return [BenchTable(f"{self.name} bench", ("variant", "backend", "threads", "MB", "load ms", "batch",
                                                  "p50/p90/p99 ms", "images/s"), rows)]

    def report_latency(self, result: dict) -> tuple[float, dict]:
        rows = sorted(result["batches"], key=lambda b: b["batch"])
        return rows[0]["p50_ms"], {f"b{b['batch']} images/s": b["images_per_s"] for b in rows}


@register_kind
class ImageClassification(_Vision):
    name = "image-classification"
    described_as = "an image classifier"
    helpers = frozenset({"classify_image"})
    output = "logits"
    unit_of_output = "labels"
    # static QDQ int8 calibrated on real photos, and dynamic int8. Measured on the tiny random-init ViT (hidden 64,
    # 48 held-out images; tests/test_vision.py::test_full_default_build_gates_on_real_images): top-1 1.000, KL 0.0015
    # and 0.0026, no node kept in fp32. int8-static-entropy/-percentile, int8-outliers, int4 (one of 8 MatMuls in fp32)
    # and fp16 pass too; qdq-a8w8 (every op quantized, for NPUs) misses at top-1 0.875.
    default_schemes = ("int8-static-minmax", "int8")

    def parity_checks(self, session: Any, golden: dict[str, np.ndarray], tolerance: Any) -> list[Check]:
        """Logits and argmax labels of the golden photos in one batch, and of each photo alone."""
        feeds = self.golden_feeds(session.inputs, golden)
        got = session.run(feeds, [self.output])[self.output]
        checks = label_checks(tolerance, golden[f"{self.golden_input}.{self.output}"], got, self.unit)
        want, alone = self._rows_alone(session, golden)
        ok, diff, detail = logits_agree(tolerance, want, alone)
        checks.append(Check("rows alone", ok, diff, f"{len(want)} images run alone vs PyTorch's alone: {detail}"))
        return checks

    def outputs_agree(self, tolerance: Any, want: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[bool, str]:
        ok, _, detail = logits_agree(tolerance, want[self.output], got[self.output])
        return ok, detail

    def tolerance_label(self, tolerance: dict) -> str:
        return label_tolerance_label(tolerance)

    def gate_metrics(self, reference, candidate, inputs: list[dict], data: dict[str, np.ndarray],
                     model: dict) -> dict[str, float]:
        """Label agreement and mean KL of the label distribution on the held-out images."""
        feeds = stored_batch(inputs, data, self.eval_prefix)
        return label_gate(reference(feeds)[self.output], candidate(feeds)[self.output])

    def gate_misses(self, result: dict[str, float], tolerance: Any) -> list[str]:
        return label_gate_misses(result, tolerance)

    def gate_score(self, result: dict[str, float]) -> float:
        return result["kld_mean"] + (1.0 - result["top1"])

    def gate_summary(self, result: dict[str, float]) -> str:
        return f"labels agree {result['top1']:.3f}, KL {result['kld_mean']:.4f} ({result['rows']} images)"

    def report_axes(self, gated: bool) -> ReportAxes:
        return ReportAxes("image label agreement vs fp32 (higher is better)", True, "p50 ms, batch 1")

    def report_accuracy(self, gate: dict | None, reference_gates: list[dict], parity: dict | None) -> tuple[float, dict]:
        return label_accuracy(gate)


@register_kind
class ImageEncoder(_Vision):
    name = "image-encoder"
    described_as = "an image encoder"
    helpers = frozenset({"embed_image"})
    output = "embeddings"
    unit_of_output = "dim"
    # measured on the tiny DINOv2 and CLIP towers: int8-static-minmax cosine mean 0.9996 / 0.9991, min 0.998 / 0.995
    # (DINOv2 with one of 6 MatMuls in fp32); int8 0.9998 / 0.9998; int4 and fp16 pass too
    default_schemes = ("int8-static-minmax", "int8")

    def parity_checks(self, session: Any, golden: dict[str, np.ndarray], tolerance: Any) -> list[Check]:
        """Embeddings of the golden photos in one batch, and of each photo alone (max |diff| and cosine)."""
        feeds = self.golden_feeds(session.inputs, golden)
        got = session.run(feeds, [self.output])[self.output]
        source = session.model.get("embedding_from", "?")
        checks = [embedding_check(tolerance, golden[f"{self.golden_input}.{self.output}"], got,
                                  f"{len(got)} images, {source}")]
        want, alone = self._rows_alone(session, golden)
        check = embedding_check(tolerance, want, alone, f"{len(want)} images run alone vs PyTorch's alone")
        checks.append(Check("rows alone", check.passed, check.max_abs, check.detail))
        return checks

    def gate_metrics(self, reference, candidate, inputs: list[dict], data: dict[str, np.ndarray],
                     model: dict) -> dict[str, float]:
        """Cosine of the embeddings of the held-out images."""
        feeds = stored_batch(inputs, data, self.eval_prefix)
        return cosine_gate(reference(feeds)[self.output], candidate(feeds)[self.output])

    def gate_summary(self, result: dict[str, float]) -> str:
        return f"cosine mean {result['cosine_mean']:.5f}, min {result['cosine_min']:.5f} ({result['rows']} images)"

    def report_axes(self, gated: bool) -> ReportAxes:
        return ReportAxes("mean image-embedding cosine vs fp32 (higher is better)", True, "p50 ms, batch 1")


# --- runtime helpers (Session.classify_image, Session.embed_image) ---------------------------------------


def _run_images(session: Any, images: list, batch_size: int, output: str) -> np.ndarray:
    """The graph's `output` for images (paths, uint8 arrays, PIL images), pre-processed as the bundle says,
    `batch_size` at a time (so memory holds one batch of pixels, not all of them)."""
    if isinstance(images, (str, bytes, np.ndarray)) or not isinstance(images, (list, tuple)) or not images:
        raise InputError("give a non-empty list of images (file paths, HxWx3 uint8 arrays or PIL images)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r:.40}")
    preprocess = session.preprocessor
    chunks = [session.run({INPUT: preprocess(images[start : start + batch_size])}, [output])[output]
              for start in range(0, len(images), batch_size)]
    values = np.concatenate(chunks).astype(np.float32)
    if not np.isfinite(values).all():
        raise BackendError(f"{session.model_path} produced non-finite {output} (NaN/inf): the variant is damaged or "
                           "numerically unstable; check it with `edgetx verify`")
    return values


def classify_image(session: Any, images: list, batch_size: int = 32) -> list[dict]:
    """Per image: its label, that label's probability, and every label's probability."""
    labels = session.model["labels"]
    return [labelled(labels, p) for p in softmax(_run_images(session, images, batch_size, "logits"))]


def embed_image(session: Any, images: list, batch_size: int = 32) -> np.ndarray:
    """Image embeddings (len(images), dim) float32, as the model gives them (`model.embedding_from`)."""
    return _run_images(session, images, batch_size, "embeddings")
