"""The image-text dual encoder kind (CLIP, SigLIP, ...): zero-shot image labels and text embeddings, over two graphs.

The main graph is the vision tower, exactly an image encoder's (`pixel_values` -> `embeddings`: edgetx.kinds.vision);
the other is the text tower (`session.component("text")`: token ids -> `embeddings` in the same space). A label's
score is `model.zero_shot`'s scale * cosine(image, text) + bias through a softmax over the labels, or a sigmoid per
label (SigLIP), as measured on the model at export (edgetx.exporters.hf_zero_shot).

Golden I/O: the image encoder's (`batch.*`), the golden label prompts (`text.*`, each also run alone) and PyTorch's
own `zero_shot.logits` (logits_per_image of the golden photos and prompts). Parity: image and text embeddings
(batch and alone), and the logits the runtime computes from the two against PyTorch's. Gates on held-out photos and
prompts: the cosine of both towers' embeddings (the lower of the two judged), and the zero-shot label agreement
reported. Torch-free.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetx.errors import BackendError, InputError
from edgetx.kinds.base import register_kind, rows_per_run, stored_batch
from edgetx.kinds.classifier import labelled, softmax
from edgetx.kinds.encoder import cosine_gate, embedding_check, text_feeds
from edgetx.kinds.vision import ImageEncoder, embed_image
from edgetx.verify import metrics
from edgetx.verify.report import Check

TEXT = "text"


def _graph_inputs(io: dict) -> dict[str, list[dict]]:
    return {"model": io["inputs"], TEXT: io["components"][TEXT]["inputs"]}


def cosines(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """The cosine of every image's features (rows) with every text's (columns)."""
    a = images / np.linalg.norm(images, axis=-1, keepdims=True)
    b = texts / np.linalg.norm(texts, axis=-1, keepdims=True)
    return a @ b.T


def scores(facts: dict, images: np.ndarray, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of every image (rows) for every text (columns), as the model scores them."""
    zero_shot = facts["zero_shot"]
    logits = zero_shot["logit_scale"] * cosines(images, texts) + zero_shot["logit_bias"]
    if zero_shot["probabilities"] == "sigmoid":
        return logits, 1.0 / (1.0 + np.exp(-logits))
    return logits, softmax(logits)


@register_kind
class ZeroShotImage(ImageEncoder):
    name = "zero-shot-image-classification"
    described_as = "an image-text dual encoder"
    helpers = frozenset({"embed_image", "embed_text", "zero_shot"})
    components = (TEXT,)
    # each tower calibrated on its own held-out photos or prompts. Measured on the tiny random-init towers (hidden 32-64,
    # 48 photos + 24 prompts): CLIP int8-static-minmax cosine mean image 0.9991 / text 0.9997, zero-shot labels agree
    # 0.979; int8 0.9999 / 0.9999, 1.000. SigLIP int8-static-minmax misses with both towers (image cosine min 0.9899)
    # and holds with the text tower alone; int8 0.9997 / 0.9999, 0.979.
    default_schemes = ("int8-static-minmax", "int8")

    def component_io_problem(self, component: str, inputs: list[dict], outputs: list[dict]) -> str | None:
        if component != TEXT:
            return super().component_io_problem(component, inputs, outputs)
        if not inputs or inputs[0]["name"] != "input_ids" or any(s.get("dtype") != "int64" for s in inputs):
            return "the text graph takes input_ids (and the tokenizer's other int64 inputs)"
        if [o["name"] for o in outputs] != ["embeddings"] or len(outputs[0]["shape"]) != 2:
            return "the text graph returns one output, 'embeddings', of rank 2 (batch, dim)"
        return None

    # --- parity ----------------------------------------------------------------------------------------

    def primary_output(self, session: Any, golden: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Image and text embeddings of the golden photos and prompts: the fp32 budget covers both towers."""
        want_images, got_images = super().primary_output(session, golden)
        text = session.component(TEXT)
        got = text.run(stored_batch(text.inputs, golden, TEXT), ["embeddings"])["embeddings"]
        return (np.concatenate([want_images, golden["text.embeddings"].ravel()]),
                np.concatenate([got_images, got.ravel()]))

    def parity_checks(self, session: Any, golden: dict[str, np.ndarray], tolerance: Any) -> list[Check]:
        """The image encoder's checks, the text embeddings (batch and each prompt alone) and the zero-shot logits."""
        checks = super().parity_checks(session, golden, tolerance)
        text = session.component(TEXT)
        feeds = stored_batch(text.inputs, golden, TEXT)
        got = text.run(feeds, ["embeddings"])["embeddings"]
        check = embedding_check(tolerance, golden["text.embeddings"], got, f"{len(got)} prompts")
        checks.append(Check("text embeddings", check.passed, check.max_abs, check.detail))
        alone = np.concatenate([text.run({k: v[row : row + 1] for k, v in feeds.items()}, ["embeddings"])["embeddings"]
                                for row in range(len(got))])
        check = embedding_check(tolerance, golden["text.alone.embeddings"], alone, f"{len(got)} prompts run alone")
        checks.append(Check("text rows alone", check.passed, check.max_abs, check.detail))
        images = session.run(self.golden_feeds(session.inputs, golden), [self.output])[self.output]
        logits, _ = scores(session.model, images, got)
        want = golden["zero_shot.logits"]
        diff = metrics.max_abs(want, logits)
        # a cosine moves by at most 2 * max|diff| / |embedding|: the logits by scale times that, at the tolerance
        norm = float(min(np.linalg.norm(golden["text.embeddings"], axis=-1).min(),
                         np.linalg.norm(golden["batch.embeddings"], axis=-1).min()))
        bound = abs(session.model["zero_shot"]["logit_scale"]) * (
            4 * tolerance.max_abs / norm if tolerance.max_kld is None else 2 * (1 - tolerance.min_cosine))
        same = float(np.mean(want.argmax(-1) == logits.argmax(-1)))
        checks.append(Check("zero-shot logits", bool(diff <= bound), diff,
                            f"{want.shape[0]} photos x {want.shape[1]} prompts: max |diff| {diff:.2e} (<= {bound:.2e}), "
                            f"labels agree {same:.2f}"))
        return checks

    def fixed_samples(self, golden: dict[str, np.ndarray], reference: Any, dims: dict[str, int],
                      count: int) -> list[dict[str, np.ndarray]]:
        """The vision graph's as an image encoder's; the text graph's: `batch` golden prompts per sample (one prompt
        further each time), padded or cut to `seq` tokens where the length is not already fixed."""
        if reference.component_name != TEXT:
            return super().fixed_samples(golden, reference, dims, count)
        feeds = stored_batch(reference.inputs, golden, TEXT)
        batch, pad = dims.get("batch", 1), int(reference.tokenizer.pad_token_id)
        samples = []
        for shift in range(count):
            sample = {}
            for spec in reference.inputs:
                value = np.resize(np.roll(feeds[spec["name"]], -shift, axis=0), (batch, feeds[spec["name"]].shape[1]))
                width = spec["shape"][1] if isinstance(spec["shape"][1], int) else dims["seq"]
                filler = pad if spec["name"] == "input_ids" else 0
                value = np.pad(value, ((0, 0), (0, max(width - value.shape[1], 0))), constant_values=filler)
                sample[spec["name"]] = value[:, :width].astype(np.int64)
            samples.append(sample)
        return samples

    # --- quantization gates (reference and candidate are {graph: run}; inputs is the whole io block) ------

    def graph_calibration_feeds(self, graph: str, inputs: list[dict], data: dict[str, np.ndarray]) -> list[dict]:
        """Each tower is calibrated on its own held-out inputs: photos for the vision graph, prompts for the text."""
        return [stored_batch(inputs, data, self.calib_prefix)]

    def gate_metrics(self, reference, candidate, inputs, data: dict[str, np.ndarray], model: dict) -> dict[str, float]:
        """Cosine of both towers' embeddings on held-out photos and prompts (the lower judged), and how often the
        zero-shot label of a photo among the prompts stays the same."""
        graph_inputs = _graph_inputs(inputs)
        feeds = {g: stored_batch(graph_inputs[g], data, self.eval_prefix) for g in graph_inputs}
        want = {g: reference[g](feeds[g])["embeddings"] for g in feeds}
        got = {g: candidate[g](feeds[g])["embeddings"] for g in feeds}
        image, text = cosine_gate(want["model"], got["model"]), cosine_gate(want[TEXT], got[TEXT])
        labels_want = scores(model, want["model"], want[TEXT])[0].argmax(-1)
        labels_got = scores(model, got["model"], got[TEXT])[0].argmax(-1)
        return {"cosine_mean": min(image["cosine_mean"], text["cosine_mean"]),
                "cosine_min": min(image["cosine_min"], text["cosine_min"]),
                "image_cosine_mean": image["cosine_mean"], "text_cosine_mean": text["cosine_mean"],
                "zero_shot_top1": float(np.mean(labels_want == labels_got)), "rows": image["rows"] + text["rows"]}

    def gate_summary(self, result: dict[str, float]) -> str:
        return (f"cosine mean image {result['image_cosine_mean']:.5f} / text {result['text_cosine_mean']:.5f}, min "
                f"{result['cosine_min']:.5f}; zero-shot labels agree {result['zero_shot_top1']:.3f}")


# --- runtime helpers (Session.embed_text, Session.zero_shot; Session.embed_image is the image encoder's) -----


def embed_text(session: Any, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Text embeddings (len(texts), dim) float32 in the images' space, as the text tower gives them (not normalized)."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts \
            or not all(isinstance(t, str) for t in texts):
        raise InputError("embed_text takes a non-empty list of strings")
    text, model = session.component(TEXT), session.model
    width = model["max_positions"] if model.get("text_padding") == "max_length" else None
    chunks, size = [], rows_per_run(model, batch_size)
    for start in range(0, len(texts), size):
        ids, types = session.tokenizer.encode_batch(list(texts[start : start + size]), model["max_positions"])
        chunks.append(text.run(text_feeds(text, ids, types, width), ["embeddings"])["embeddings"])
    values = np.concatenate(chunks).astype(np.float32)
    if not np.isfinite(values).all():
        raise BackendError(f"{text.model_path} produced non-finite text embeddings (NaN/inf): the variant is damaged "
                           "or numerically unstable; check it with `edgetx verify`")
    return values


def zero_shot(session: Any, images: list, labels: list[str], template: str | None = None,
              batch_size: int = 32) -> list[dict]:
    """Per image: the best of `labels`, its probability, and every label's, each label written into `template`
    (default: the model's, "This is a photo of {}."). Softmax over the labels, or a sigmoid per label (SigLIP)."""
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels \
            or not all(isinstance(x, str) and x.strip() for x in labels):
        raise InputError("zero_shot needs a non-empty list of labels (non-empty strings), e.g. ['a cat', 'a dog']")
    if len(set(labels)) != len(labels):
        raise InputError(f"zero_shot: labels repeat ({', '.join(sorted({x for x in labels if labels.count(x) > 1}))})")
    template = template if template is not None else session.model["zero_shot"]["template"]
    if not isinstance(template, str) or template.count("{}") != 1:
        raise InputError(f"the template must contain '{{}}' once, where each label goes; got {template!r:.60}")
    texts = embed_text(session, [template.replace("{}", label) for label in labels], batch_size)
    _, probabilities = scores(session.model, embed_image(session, images, batch_size), texts)
    return [labelled(list(labels), row) for row in probabilities]

