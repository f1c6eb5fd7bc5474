"""Hugging Face image-text dual encoders (CLIP, SigLIP, ALIGN, ...: transformers' zero-shot image classification
registry) saved with their tokenizer: both towers, for zero-shot labels and text embeddings.

Two graphs: the vision tower (the main graph, exactly the image-encoder contract: `pixel_values` -> `embeddings`,
the model's own get_image_features) and the text tower (`text.onnx`: the tokenizer's inputs -> `embeddings`, its
get_text_features). What turns the two into label scores is measured on the model itself, not assumed per family:
- the logits: PyTorch's own `logits_per_image` of the golden photos and texts, fitted as scale * cosine + bias by
  least squares (CLIP: exp(logit_scale), bias 0; SigLIP: its logit_bias too; ALIGN: 1 / temperature); a model whose
  logits are not that is refused;
- the probabilities: a sigmoid per label where the model learned a logit bias (a sigmoid loss), else a softmax;
- the padding: if padding a batch moves a text's features (SigLIP pools the last position and takes no mask), every
  text is padded to the text tower's full length, as transformers' pipeline does for it; else to the longest.
A folder without a tokenizer exports the vision tower alone (edgetx.exporters.hf_vision).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from edgetx.exporters import images as photos
from edgetx.exporters.causal_lm import quiet_export
from edgetx.exporters.hf import UnsupportedModel, _load_weights, _special_ids
from edgetx.exporters.hf_vision import _compare, _preprocessor, export_vision
from edgetx.exporters.source import ExportSource
from edgetx.kinds.zero_shot import cosines
from edgetx.passes import files
from edgetx.runtimes.image import PREPROCESSOR_FILE

KIND = "zero-shot-image-classification"
TEMPLATE = "This is a photo of {}."  # transformers' zero-shot pipeline's default hypothesis
# what the golden texts and the gates name: the things in the bundled photos, and others that are not
GOLDEN_LABELS = ("an astronaut", "a cup of coffee", "a cat", "a rocket", "a man with a camera", "a logo")
HELD_OUT_LABELS = ("a dog", "a galaxy", "a motorcycle", "a page of text", "a bowl of fruit", "a car", "a city at night",
                   "a mountain", "a bird", "a boat", "a tree", "a plate of food", "a computer", "a bicycle",
                   "a flower", "a child", "a horse", "a beach", "a clock", "a chair", "a street", "a book",
                   "a guitar", "a person")
CALIBRATION_LABELS = ("a train", "a lamp", "a shoe", "a window", "a river", "a bridge", "a keyboard", "a sandwich")
FIT_TOLERANCE = 1e-4  # the fitted scale * cosine + bias against PyTorch's logits, relative to their largest


def _features(out) -> torch.Tensor:
    """get_*_features returns the tensor (transformers 4) or an output whose pooler_output it is (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class _ImageFeatures(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(pixel_values=pixel_values))


class _TextFeatures(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_text_features(**dict(zip(self.names, inputs))))


def _text_inputs(model, tokenizer, folder: Path) -> list[str]:
    """The tokenizer's outputs the text tower takes, input_ids first (SigLIP's tokenizer gives no attention mask)."""
    takes = set(inspect.signature(model.get_text_features).parameters)
    names = [n for n in tokenizer.model_input_names if n in takes]
    if "input_ids" not in names:
        raise UnsupportedModel(f"{folder}: the tokenizer gives {tokenizer.model_input_names} and "
                               f"{type(model).__name__}.get_text_features takes no input_ids among them")
    return ["input_ids", *[n for n in names if n != "input_ids"]]


def _text_length(config, tokenizer) -> int:
    """The longest text: the text tower's position table, or the tokenizer's limit if shorter."""
    text = config.text_config
    table = getattr(text, "max_position_embeddings", None) or 512
    limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 10**6 else table
    return int(min(table, limit))


def _fit_logits(cosines: np.ndarray, logits: np.ndarray, folder: Path, architecture: str) -> tuple[float, float]:
    """scale, bias with logits = scale * cosines + bias (least squares), refused if that is not what they are."""
    design = np.stack([cosines.ravel(), np.ones(cosines.size)], axis=1).astype(np.float64)
    (scale, bias), *_ = np.linalg.lstsq(design, logits.ravel().astype(np.float64), rcond=None)
    residual = float(np.abs(design @ [scale, bias] - logits.ravel()).max())
    if residual > FIT_TOLERANCE * max(float(np.abs(logits).max()), 1.0):
        raise UnsupportedModel(f"{folder}: {architecture}'s logits_per_image are not scale * cosine + bias of its image "
                               f"and text features (off by {residual:.3g}); edgetx cannot score labels from the towers")
    # a bias within the fit's own error is none (CLIP's logits are the scaled cosine alone)
    return float(scale), float(bias) if abs(bias) > FIT_TOLERANCE * max(abs(scale), 1.0) else 0.0


def export_text(wrapper: torch.nn.Module, example: dict[str, torch.Tensor], names: list[str], fixed_length: bool,
                out_path: Path, opset: int) -> None:
    """The text tower with a dynamic batch, and a dynamic length unless every text is padded to the full one."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", min=2)
    shapes = tuple({0: batch} if fixed_length else {0: batch, 1: seq} for _ in names)
    with quiet_export():
        program = torch.onnx.export(wrapper, tuple(example[n] for n in names), dynamo=True, opset_version=opset,
                                    input_names=names, output_names=["embeddings"], dynamic_shapes=(shapes,),
                                    optimize=True, verbose=False)
    files.save(program.model, out_path)


def zero_shot_source(folder: Path, config, tokenizer, tokenizer_files: dict, *, source: str, source_sha256: str,
                     kwargs: dict, trust_remote_code: bool, architecture: str) -> ExportSource:
    """An ExportSource for both towers of a dual encoder (a model of transformers' zero-shot image registry)."""
    from transformers.models.auto import modeling_auto as auto

    from edgetx.exporters.hf_vision import _class
    from edgetx.runtimes.image import load_image

    notes: list[str] = []
    preprocess, processor, config_file = _preprocessor(folder, trust_remote_code)
    golden_images = [load_image(p) for p in photos.golden_paths()]
    pixels = np.stack([preprocess.pixels(image) for image in golden_images])
    height, width = pixels.shape[2:]
    preprocess_diff = _compare(pixels, processor, golden_images, folder)
    model_class = _class(auto.MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type))
    if model_class is None:
        raise UnsupportedModel(f"{folder}: transformers here has no zero-shot class for model_type {config.model_type!r}")
    config._attn_implementation = "sdpa"
    model, info = _load_weights(model_class, folder, config=config, dtype=torch.float32,
                                trust_remote_code=trust_remote_code, output_loading_info=True, **kwargs)
    if info.get("missing_keys"):
        raise UnsupportedModel(f"{folder}: the weights lack {', '.join(list(info['missing_keys'])[:3])}; "
                               f"{model_class.__name__}'s towers would be partly random")
    if not all(callable(getattr(model, m, None)) for m in ("get_image_features", "get_text_features")):
        raise UnsupportedModel(f"{folder}: {model_class.__name__} has no get_image_features / get_text_features: its "
                               "towers do not embed images and texts separately (edgetx scores labels from the two)")
    names = _text_inputs(model, tokenizer, folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = getattr(config.text_config, "pad_token_id", None) or 0
    length = _text_length(config, tokenizer)
    images, texts = _ImageFeatures(model).eval(), _TextFeatures(model, names).eval()

    def encode(prompts: list[str], padding: str | bool) -> dict[str, np.ndarray]:
        encoded = tokenizer(prompts, padding=padding, truncation=True, max_length=length)
        return {n: np.asarray(encoded[n], dtype=np.int64) for n in names}

    @torch.no_grad()
    def run_text(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return texts(*[torch.from_numpy(feeds[n]) for n in names]).numpy()

    @torch.no_grad()
    def run_images(batch: np.ndarray) -> np.ndarray:
        return images(torch.from_numpy(batch)).numpy()

    prompts = [TEMPLATE.format(label) for label in GOLDEN_LABELS]
    try:
        batch = encode(prompts, True)
        alone = np.concatenate([run_text(encode([p], True)) for p in prompts])
        padded = run_text(batch)
    except Exception as e:
        raise UnsupportedModel(f"{folder}: {model_class.__name__}'s text tower does not run on its tokenizer's output "
                               f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    moved = float(np.abs(padded - alone).max())
    fixed_length = moved > 1e-5 * max(float(np.abs(alone).max()), 1.0)
    padding = "max_length" if fixed_length else True
    if fixed_length:
        notes.append(f"padding moves a text's features by {moved:.3g} (no mask, or pooling at a position): every text "
                     f"is padded to the text tower's {length} tokens")

    try:
        with torch.no_grad():
            both = model(pixel_values=torch.from_numpy(pixels), **{n: torch.from_numpy(v)
                                                                   for n, v in encode(prompts, padding).items()})
    except Exception as e:  # e.g. towers of different widths
        raise UnsupportedModel(f"{folder}: {model_class.__name__} does not score its own photos and texts "
                               f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    logits = both.logits_per_image.numpy()
    image_features, text_features = run_images(pixels), run_text(encode(prompts, padding))
    for what, values in (("image features", image_features), ("text features", text_features), ("logits", logits)):
        if not np.isfinite(values).all():
            raise UnsupportedModel(f"{folder}: {model_class.__name__}'s own {what} on real photos and texts are not "
                                   "finite (inf/NaN) in PyTorch: its weights overflow in float32; nothing to export")
    scale, bias = _fit_logits(cosines(image_features, text_features), logits, folder, model_class.__name__)
    probabilities = "sigmoid" if getattr(model, "logit_bias", None) is not None else "softmax"
    dim = int(image_features.shape[-1])
    if text_features.shape[-1] != dim:
        raise UnsupportedModel(f"{folder}: image features of size {dim} and text features of size "
                               f"{text_features.shape[-1]}: the towers do not share an embedding space")

    def golden() -> tuple[dict[str, np.ndarray], dict]:
        text_batch = encode(prompts, padding)
        arrays = {"batch.pixel_values": pixels, "batch.embeddings": image_features,
                  "batch.alone.embeddings": np.concatenate([run_images(pixels[i : i + 1]) for i in range(len(pixels))]),
                  **{f"text.{n}": v for n, v in text_batch.items()}, "text.embeddings": text_features,
                  "text.alone.embeddings": np.concatenate([run_text(encode([p], padding)) for p in prompts]),
                  "zero_shot.logits": logits}
        return arrays, {"images": list(photos.GOLDEN), "texts": prompts, "pre-processing": "edgetx.runtimes.image"}

    def quant_data() -> dict[str, np.ndarray]:
        """Held-out photos and texts (48 photos and 24 label prompts for the gates, 16 and 8 for calibration)."""
        arrays = {"eval.pixel_values": preprocess(photos.held_out_images()),
                  "calib.pixel_values": preprocess(photos.calibration_images())}
        for prefix, labels in (("eval", HELD_OUT_LABELS), ("calib", CALIBRATION_LABELS)):
            arrays.update({f"{prefix}.{n}": v for n, v in encode([TEMPLATE.format(x) for x in labels], padding).items()})
        return arrays

    def export(path: Path, opset: int) -> None:
        export_vision(images, torch.from_numpy(pixels[:2]), "embeddings", path, opset)
        example = encode(prompts[:2], "max_length" if fixed_length else True)
        export_text(texts, {n: torch.from_numpy(v) for n, v in example.items()}, names, fixed_length,
                    Path(path).with_name("text.onnx"), opset)

    text_shape = ["batch", length if fixed_length else "seq"]
    io = {"inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, int(height), int(width)]}],
          "outputs": [{"name": "embeddings", "dtype": "float32", "shape": ["batch", dim]}],
          "components": {"text": {"inputs": [{"name": n, "dtype": "int64", "shape": list(text_shape)} for n in names],
                                  "outputs": [{"name": "embeddings", "dtype": "float32", "shape": ["batch", dim]}]}}}
    facts = {"name": Path(source).name, "kind": KIND, "architecture": model_class.__name__,
             "model_type": config.model_type, "image_size": [int(height), int(width)], "embedding_from": "image_embeds",
             "embedding_dim": dim, "max_positions": length, "text_padding": "max_length" if fixed_length else "longest",
             "zero_shot": {"logit_scale": scale, "logit_bias": bias, "probabilities": probabilities,
                           "template": TEMPLATE},
             "parameters": sum(p.numel() for p in model.parameters())}
    preprocessor = {"type": "image", "file": PREPROCESSOR_FILE, "image_size": [int(height), int(width)],
                    "processor_class": type(processor).__name__ if processor is not None
                    else str(preprocess.config.get("image_processor_type", "?")),
                    "max_abs_vs_transformers": preprocess_diff}
    tokenizer_block = _special_ids(tokenizer, config.text_config)
    if tokenizer_block["pad_token_id"] is None:
        tokenizer_block["pad_token_id"] = tokenizer.pad_token_id
    return ExportSource(
        name=Path(source).name, kind=KIND, model=facts, io=io, preprocessor=preprocessor, tokenizer=tokenizer_block,
        export=export, capture_golden=golden, quant_data=quant_data, source=source, source_sha256=source_sha256,
        extra_files={PREPROCESSOR_FILE: config_file, **tokenizer_files}, module=model,
        run_torch=lambda feeds: images(torch.tensor(np.array(feeds["pixel_values"]))), notes=notes,
        export_hint="If this architecture needs an adjustment, add a small named one in exporters/hf_zero_shot.py.")
