"""Hugging Face vision models: image-classification heads (`logits`) and image encoders (`embeddings`), one
input `pixel_values` (batch, 3, H, W), batch dynamic, H and W those the model's image processor produces.

Which folders are vision models is read from transformers' own registries (`vision_task`):
- a head: an architecture of the folder in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES -> image-classification;
- a bare model: the type's base class (MODEL_MAPPING_NAMES) whose forward's first input is `pixel_values`
  -> image-encoder (a folder saved with another head exports its backbone, and says so);
- a dual encoder (MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES: CLIP, SigLIP, ...): its vision tower
  (`vision_config`), with its projection where transformers has a `...VisionModelWithProjection` class
  -> image-encoder, when the folder has no tokenizer; with one, both towers are exported (edgetx.exporters.hf_zero_shot).
An image encoder's embeddings are `image_embeds` where the model has them, else `pooler_output`, else the CLS
token of `last_hidden_state`, or a conv backbone's last feature map averaged over H and W (model.embedding_from). The folder's preprocessor_config.json, as the slow image
processor class normalizes it, travels in the bundle (edgetx.runtimes.image runs it torch-free); at export it is
run against transformers' processor on the golden photos and the difference is recorded. The golden inputs are
real photos pre-processed by edgetx itself, so they are exactly what the runtime feeds. A family's few named
adjustments are ADJUSTMENTS.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgetx.exporters import images as photos
from edgetx.exporters.causal_lm import quiet_export
from edgetx.exporters.hf import UnsupportedModel, _load_weights
from edgetx.exporters.hf_encoder import _labels
from edgetx.exporters.source import ExportSource
from edgetx.passes import files
from edgetx.runtimes.image import PREPROCESSOR_FILE, ImagePreprocessor

IMAGE_CLASSIFICATION, IMAGE_ENCODER = "image-classification", "image-encoder"
# edgetx's pixel_values against transformers' slow processor on the golden photos: the same PIL resize and the
# same float32 arithmetic give 0.0 (measured for the seven processors of tests/test_vision.py); beyond this the
# build is refused, as the bundle would feed the model other pixels than transformers does.
PREPROCESS_TOLERANCE = 1e-5


@dataclass(frozen=True)
class VisionTask:
    kind: str  # IMAGE_CLASSIFICATION or IMAGE_ENCODER
    model_class: type  # the transformers class exported
    tower: bool = False  # the vision tower of a dual encoder (its config is config.vision_config)


def _class(name: object) -> type | None:
    """A transformers class by name; None if there is none, or it cannot be imported here (a missing backend)."""
    import transformers

    try:
        return getattr(transformers, name, None) if isinstance(name, str) else None
    except Exception:  # transformers' lazy module raises for classes whose optional dependency is missing
        return None


def _names(entry: object) -> tuple[str, ...]:
    return tuple(entry) if isinstance(entry, (list, tuple)) else (entry,) if isinstance(entry, str) else ()


def takes_pixels(cls: type | None) -> bool:
    """Whether `cls.forward` takes `pixel_values` first and nothing else it requires."""
    if cls is None or not hasattr(cls, "forward"):
        return False
    params = [p for p in inspect.signature(cls.forward).parameters.values() if p.name != "self"]
    required = [p for p in params[1:] if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    return bool(params) and params[0].name == "pixel_values" and not required


def _tower_class(vision_config) -> type | None:
    """A dual encoder's vision tower: the vision config type's base class, with its projection if transformers
    has one (`...VisionModelWithProjection`: the projected image_embeds the model compares with text)."""
    from transformers.models.auto import modeling_auto as auto

    for name in (auto.MODEL_MAPPING_NAMES.get(vision_config.model_type),
                 type(vision_config).__name__.removesuffix("Config") + "Model"):
        base = _class(name)
        if takes_pixels(base):
            projected = _class(f"{base.__name__}WithProjection")
            return projected if takes_pixels(projected) else base
    return None


def vision_task(config) -> VisionTask | None:
    """What transformers' registries make of this config as a vision model, or None if it is not one."""
    from transformers.models.auto import modeling_auto as auto

    model_type = config.model_type
    heads = _names(auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.get(model_type))
    for architecture in config.architectures or []:
        if architecture in heads and takes_pixels(_class(architecture)):
            return VisionTask(IMAGE_CLASSIFICATION, _class(architecture))
    base = _class(auto.MODEL_MAPPING_NAMES.get(model_type))
    if takes_pixels(base):
        return VisionTask(IMAGE_ENCODER, base)
    vision = getattr(config, "vision_config", None)
    if model_type in auto.MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES and vision is not None:
        tower = _tower_class(vision)
        if tower is not None:
            return VisionTask(IMAGE_ENCODER, tower, tower=True)
    return None


def _projection_dim(config, model_config) -> str | None:
    """A dual encoder's projection size lives in the composite config; its vision sub-config may keep a stale
    default (CLIPVisionConfig's 512): the tower's projection takes the composite's."""
    dim = getattr(config, "projection_dim", None)
    if model_config is not config and isinstance(dim, int) and getattr(model_config, "projection_dim", dim) != dim:
        model_config.projection_dim = dim
        return f"projection_dim {dim} taken from the composite config (the vision config said otherwise)"
    return None


def _no_random_masking(config, model_config) -> str | None:
    """A masked-autoencoder encoder (ViT-MAE) drops a random `mask_ratio` of the patches on every forward, for
    pre-training: as an encoder it sees all of them (ratio 0; its CLS output does not depend on the patches'
    shuffled order)."""
    ratio = getattr(model_config, "mask_ratio", None)
    if isinstance(ratio, (int, float)) and ratio > 0:
        model_config.mask_ratio = 0.0
        return f"mask_ratio {ratio} set to 0: the random patch masking of pre-training is off, every patch is seen"
    return None


# Config edits before loading (config, the config of the class loaded), each applying where the config has what it
# is about; each returns its note for the bundle's export notes, or None when it does not apply.
ADJUSTMENTS = [_projection_dim, _no_random_masking]


def _load(task: VisionTask, folder: Path, config, trust_remote_code: bool, kwargs: dict, notes: list[str],
          attention: str = "sdpa"):
    """The model in eval mode (sdpa attention where the class has it), and the weights the folder lacked."""
    model_config = config.vision_config if task.tower else config
    notes += [note for adjust in ADJUSTMENTS if (note := adjust(config, model_config))]
    model_config._attn_implementation = attention
    model, info = _load_weights(task.model_class, folder, config=model_config, dtype=torch.float32,
                                trust_remote_code=trust_remote_code, output_loading_info=True, **kwargs)
    return model, list(info.get("missing_keys") or [])


def _embedding_from(model, pixels: torch.Tensor, missing: list[str], folder: Path, notes: list[str]) -> str:
    """Which output an image encoder's embeddings are: image_embeds, else pooler_output, else the CLS token."""
    try:
        with torch.no_grad():
            out = model(pixel_values=pixels)
    except Exception as e:  # e.g. a config's image_size that is not the processor's output size
        raise UnsupportedModel(f"{folder}: {type(model).__name__} does not run on the {pixels.shape[2]}x"
                               f"{pixels.shape[3]} images its image processor makes ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:200]})") from None
    if getattr(out, "image_embeds", None) is not None:
        return "image_embeds"
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None and not any("pooler" in key for key in missing):
        return "pooler_output"
    if pooled is not None:
        notes.append("the folder has no weights for the pooler (" + ", ".join(k for k in missing if "pooler" in k)[:120]
                     + "); embeddings are the CLS token of last_hidden_state")
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is not None and hidden.ndim == 4:  # a conv backbone's feature map (batch, C, H, W): its mean over H, W
        notes.append(f"{type(model).__name__} pools nothing: embeddings are its last feature map "
                     f"({hidden.shape[1]} channels) averaged over height and width")
        return "feature_map_mean"
    if hidden is None or hidden.ndim != 3:
        raise UnsupportedModel(f"{folder}: {type(model).__name__} gives no image_embeds, pooler_output, token "
                               "sequence or feature map (last_hidden_state of rank 3 or 4) to take an image embedding from")
    return "cls_token"


class _Output(torch.nn.Module):
    """The model's forward on pixel_values with its one output, (batch, features)."""

    def __init__(self, model: torch.nn.Module, source: str):
        super().__init__()
        self.model, self.source = model, source

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        if self.source == "cls_token":
            return out.last_hidden_state[:, 0]
        if self.source == "feature_map_mean":
            return out.last_hidden_state.mean(dim=(2, 3))
        return getattr(out, self.source).flatten(1)  # a conv net's pooler_output is (batch, C, 1, 1)


def export_vision(wrapper: torch.nn.Module, example: torch.Tensor, output: str, out_path: Path, opset: int) -> None:
    """Export with a dynamic batch (H and W fixed by the example, the pre-processor's output size)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_export():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=opset, input_names=["pixel_values"],
                                    output_names=[output], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                    optimize=True, verbose=False)
    files.save(program.model, out_path)


def _preprocessor(folder: Path, trust_remote_code: bool) -> tuple[ImagePreprocessor, object | None, bytes]:
    """edgetx's pre-processing of the folder's image processor config (as the slow class normalizes it: sizes as
    dicts), the slow processor itself (to compare with; None if transformers cannot make one), the config file."""
    if not (folder / "preprocessor_config.json").is_file():
        raise UnsupportedModel(f"{folder}: no preprocessor_config.json; a vision model needs its image processor's "
                               "config beside it (processor.save_pretrained(folder))")
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(folder, use_fast=False, trust_remote_code=trust_remote_code)
        text = processor.to_json_string()
    except Exception:  # a processor transformers cannot build slow: take the file as it is
        processor, text = None, (folder / "preprocessor_config.json").read_text()
    try:
        return ImagePreprocessor(json.loads(text)), processor, text.encode("utf-8")
    except Exception as e:
        raise UnsupportedModel(f"{folder}: {e}") from None


def _compare(ours: np.ndarray, processor, images: list, folder: Path) -> float | None:
    """Largest difference of edgetx's pixel_values from transformers' processor on the same RGB photos."""
    if processor is None:
        return None
    theirs = np.asarray(processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)
    diff = float(np.abs(theirs - ours).max()) if theirs.shape == ours.shape else float("inf")
    if diff > PREPROCESS_TOLERANCE:
        raise UnsupportedModel(f"{folder}: edgetx's image pre-processing differs from transformers' "
                               f"{type(processor).__name__} by {diff:.3g} on real photos (shapes {list(ours.shape)} vs "
                               f"{list(theirs.shape)}); a step of this processor is not one edgetx reproduces")
    return diff


def vision_source(folder: Path, config, task: VisionTask, *, source: str, source_sha256: str, kwargs: dict,
                  trust_remote_code: bool, architecture: str) -> ExportSource:
    """An ExportSource for a vision model: an image-classification head or an image encoder."""
    from edgetx.runtimes.image import load_image

    notes: list[str] = []
    preprocess, processor, config_file = _preprocessor(folder, trust_remote_code)
    golden_images = [load_image(p) for p in photos.golden_paths()]  # sizes and aspect ratios of every kind
    arrays = [preprocess.pixels(image) for image in golden_images]
    if len({a.shape for a in arrays}) > 1:
        raise UnsupportedModel(f"{folder}: its image processor keeps each image's aspect ratio (no crop), so photos "
                               f"come out at {len({a.shape for a in arrays})} different sizes; edgetx exports a graph of "
                               "fixed H and W (a processor with a crop_size, or a {height, width} size, gives one)")
    pixels = np.stack(arrays)
    height, width = pixels.shape[2:]
    preprocess_diff = _compare(pixels, processor, golden_images, folder)
    model, missing = _load(task, folder, config, trust_remote_code, kwargs, notes)
    exported = type(model).__name__
    if task.tower:
        notes.append(f"the vision tower of {architecture}: {exported}; the folder has no tokenizer, so its text tower "
                     "is not exported (save the tokenizer beside it for zero-shot labels)")
    elif exported != architecture:
        notes.append(f"exported as the base model {exported} (the folder's {architecture} without its head)")
    if task.kind == IMAGE_CLASSIFICATION:
        if missing:
            raise UnsupportedModel(f"{folder}: the weights lack {', '.join(missing[:3])}; {exported}'s head would be "
                                   "random")
        output, embedding_from = "logits", None
    else:
        output = "embeddings"
        embedding_from = _embedding_from(model, torch.from_numpy(pixels[:2]), missing, folder, notes)
    wrapper = _Output(model, "logits" if embedding_from is None else embedding_from).eval()
    try:
        with torch.no_grad():
            width_out = int(wrapper(torch.from_numpy(pixels[:2])).shape[-1])
    except Exception as e:  # e.g. a config's image_size that is not the processor's output size
        raise UnsupportedModel(f"{folder}: {exported} does not run on the {height}x{width} images its image processor "
                               f"makes ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    labels = _labels(config, IMAGE_CLASSIFICATION) if embedding_from is None else None
    if labels is not None and len(labels) != width_out:
        raise UnsupportedModel(f"{folder}: config.num_labels is {len(labels)} but {exported} gives {width_out} logits")

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return wrapper(torch.from_numpy(batch)).numpy()

    def golden() -> tuple[dict[str, np.ndarray], dict]:
        arrays = {"batch.pixel_values": pixels, f"batch.{output}": run(pixels),
                  f"batch.alone.{output}": np.concatenate([run(pixels[i : i + 1]) for i in range(len(pixels))])}
        return arrays, {"images": list(photos.GOLDEN), "pre-processing": "edgetx.runtimes.image"}

    def quant_data() -> dict[str, np.ndarray]:
        """Held-out photos, mirrors and crops: 48 for the gates, 16 others for calibration (none golden)."""
        return {"eval.pixel_values": preprocess(photos.held_out_images()),
                "calib.pixel_values": preprocess(photos.calibration_images())}

    def export(path: Path, opset: int) -> None:
        nonlocal wrapper, model
        try:
            export_vision(wrapper, torch.from_numpy(pixels[:2]), output, path, opset)
        except Exception as error:  # sdpa paths torch.export cannot decompose (BEiT's relative position bias)
            if getattr(model.config, "_attn_implementation", None) != "sdpa":
                raise
            model, _ = _load(task, folder, config, trust_remote_code, kwargs, [], attention="eager")
            wrapper = _Output(model, wrapper.source).eval()
            made.module = model
            export_vision(wrapper, torch.from_numpy(pixels[:2]), output, path, opset)
            while error.__cause__ is not None:  # torch.onnx wraps the torch.export error that says what broke
                error = error.__cause__
            notes.append("exported with eager attention (same math): torch.onnx could not export its sdpa attention "
                         f"({type(error).__name__}: {' '.join(str(error).split())[:120]})")

    facts = {"name": Path(source).name, "kind": task.kind, "architecture": exported, "model_type": config.model_type,
             "image_size": [int(height), int(width)],
             **({"labels": labels} if labels is not None else {"embedding_from": embedding_from,
                                                                "embedding_dim": width_out}),
             "parameters": sum(p.numel() for p in model.parameters())}
    preprocessor = {"type": "image", "file": PREPROCESSOR_FILE, "image_size": [int(height), int(width)],
                    "processor_class": type(processor).__name__ if processor is not None
                    else str(preprocess.config.get("image_processor_type", "?")),
                    "max_abs_vs_transformers": preprocess_diff}
    io = {"inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, int(height), int(width)]}],
          "outputs": [{"name": output, "dtype": "float32", "shape": ["batch", width_out]}]}
    made = ExportSource(
        name=Path(source).name, kind=task.kind, model=facts, io=io, preprocessor=preprocessor,
        tokenizer={"type": "ids", "eos_token_ids": [], "pad_token_id": 0},  # no text: as a tokenizer-less bundle
        export=export, capture_golden=golden, quant_data=quant_data, source=source, source_sha256=source_sha256,
        extra_files={PREPROCESSOR_FILE: config_file}, module=model,
        run_torch=lambda feeds: wrapper.model(pixel_values=torch.tensor(np.array(feeds["pixel_values"]))), notes=notes,
        export_hint="If this architecture needs an adjustment, add a small named one in exporters/hf_vision.py "
                    "(ADJUSTMENTS).")
    return made
