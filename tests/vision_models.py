"""Tiny random-init Hugging Face vision models (hidden 32-64, 2 layers, 32-pixel images), saved with
`save_pretrained` beside a REAL preprocessor config: the image processor class's own defaults for that model
type, with only size/crop set to the tiny image size. Used by tests/test_vision.py and benchmarks/coverage.py."""

from __future__ import annotations

import math
from pathlib import Path

IMAGE = 32  # the graph's H and W
LABELS = ("tabby cat", "astronaut", "coffee cup", "rocket", "galaxy")
VIT_SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 image_size=IMAGE, patch_size=8)


def processors() -> dict[str, object]:
    """The slow (PIL) image processor each tested architecture ships with, at the tiny size: name -> processor."""
    import transformers as tf

    square, crop = {"height": IMAGE, "width": IMAGE}, {"height": IMAGE, "width": IMAGE}
    return {
        "ViTImageProcessor": tf.ViTImageProcessor(size=square),
        "DeiTImageProcessor": tf.DeiTImageProcessor(size={"height": IMAGE + 8, "width": IMAGE + 8}, crop_size=crop),
        # transformers 5 no longer crops by default (do_center_crop False), 4.57 does: a crop-free size for both
        "BeitImageProcessor": tf.BeitImageProcessor(size=square, crop_size=crop),
        "ConvNextImageProcessor": tf.ConvNextImageProcessor(size={"shortest_edge": IMAGE}),  # Swin's; crop_pct 0.875
        "BitImageProcessor": tf.BitImageProcessor(size={"shortest_edge": IMAGE + 4}, crop_size=crop),  # DINOv2's
        "CLIPImageProcessor": tf.CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size=crop),
        "SiglipImageProcessor": tf.SiglipImageProcessor(size=square),
        # beyond the tested architectures' own: EfficientNet's second normalization (include_top), ALIGN's [-1, 1]
        # rescale (rescale_offset), PoolFormer's resize to size / crop_pct before its crop
        "EfficientNetImageProcessor": tf.EfficientNetImageProcessor(size=square),
        "EfficientNetImageProcessor (ALIGN)": tf.EfficientNetImageProcessor(
            size=square, rescale_factor=1 / 127.5, rescale_offset=True, include_top=False),
        "PoolFormerImageProcessor": tf.PoolFormerImageProcessor(size={"shortest_edge": IMAGE}, crop_size=crop,
                                                                crop_pct=0.9),
    }


def _configs() -> dict[str, tuple[object, str | None, str]]:
    """architecture (the class saved) -> (its tiny config, the name of its image processor in `processors()`)."""
    import transformers as tf

    swin = dict(image_size=IMAGE, patch_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4)
    tower = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 image_size=IMAGE, patch_size=8)
    text = dict(vocab_size=384, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=16)
    return {
        "ViTForImageClassification": (tf.ViTConfig(**VIT_SIZES), "ViTImageProcessor"),
        "DeiTForImageClassificationWithTeacher": (tf.DeiTConfig(**VIT_SIZES), "DeiTImageProcessor"),
        "BeitForImageClassification": (tf.BeitConfig(**VIT_SIZES, use_relative_position_bias=True,
                                                     use_mean_pooling=True), "BeitImageProcessor"),
        "SwinForImageClassification": (tf.SwinConfig(**swin), "ConvNextImageProcessor"),
        "Dinov2Model": (tf.Dinov2Config(**VIT_SIZES), "BitImageProcessor"),
        "CLIPModel": (tf.CLIPConfig(text_config=text, vision_config=tower, projection_dim=32), "CLIPImageProcessor"),
        "SiglipModel": (tf.SiglipConfig(text_config=text, vision_config=tower), "SiglipImageProcessor"),
    }


ARCHITECTURES = ("ViTForImageClassification", "DeiTForImageClassificationWithTeacher", "BeitForImageClassification",
                 "SwinForImageClassification", "Dinov2Model", "CLIPModel", "SiglipModel")


def save_tiny_vision(architecture: str, folder: Path, **config_overrides) -> Path:
    """Write a random-init `architecture` (one of ARCHITECTURES) and its real preprocessor config to `folder`;
    a classification head gets LABELS and larger weights (labels decided by clear margins, not float noise)."""
    import torch
    import transformers as tf

    config, processor = _configs()[architecture]
    for key, value in config_overrides.items():
        setattr(config, key, value)
    if architecture.endswith(("ForImageClassification", "WithTeacher")):
        config.num_labels = len(LABELS)
        config.id2label = dict(enumerate(LABELS))
        config.label2id = {label: i for i, label in enumerate(LABELS)}
    torch.manual_seed(0)
    model = getattr(tf, architecture)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "classifier" in name and name.endswith("weight"):
                param.normal_(0, 1.0)
    model.config.architectures = [architecture]
    model.save_pretrained(folder, safe_serialization=True)
    processors()[processor].save_pretrained(folder)
    return Path(folder)


DUAL_ENCODERS = ("CLIPModel", "SiglipModel")


def _dual_tokenizer(architecture: str):
    """A byte-level BPE trained on held-out stdlib text, shaped as the model's own: CLIP's wraps a text in
    <|startoftext|> ... <|endoftext|> and pads with <|endoftext|> (its pooling finds the first one), SigLIP's ends it
    with </s>, pads with </s> and gives no attention mask (its pooling takes the last position)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from hf_models import VOCAB, _corpus

    clip = architecture == "CLIPModel"
    specials = ["<|startoftext|>", "<|endoftext|>"] if clip else ["</s>", "<unk>"]
    tk = ByteLevelBPETokenizer()
    tk.train_from_iterator(_corpus(), vocab_size=VOCAB, special_tokens=specials, show_progress=False)
    tk._tokenizer.post_processor = (TemplateProcessing(single="<|startoftext|> $A <|endoftext|>",
                                                       special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
                                    if clip else TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)]))
    if clip:
        return PreTrainedTokenizerFast(tokenizer_object=tk._tokenizer, bos_token="<|startoftext|>",
                                       eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=TEXT_LENGTH,
                                       model_input_names=["input_ids", "attention_mask"])
    return PreTrainedTokenizerFast(tokenizer_object=tk._tokenizer, eos_token="</s>", pad_token="</s>",
                                   unk_token="<unk>", model_max_length=TEXT_LENGTH, model_input_names=["input_ids"])


TEXT_LENGTH = 24  # the tiny text towers' positions


def save_tiny_dual(architecture: str, folder: Path) -> Path:
    """A random-init CLIPModel or SiglipModel (one of DUAL_ENCODERS) saved with its image processor config AND a
    tokenizer shaped as the model's own: both towers export (the zero-shot kind)."""
    import torch
    import transformers as tf

    tokenizer = _dual_tokenizer(architecture)
    config, processor = _configs()[architecture]
    text = config.text_config
    text.vocab_size, text.max_position_embeddings = len(tokenizer), TEXT_LENGTH
    if hasattr(text, "projection_size"):  # SigLIP's text head projects into the vision tower's width (no projection)
        text.projection_size = config.vision_config.hidden_size
    specials = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id}
    for key, value in specials.items():
        if value is not None:
            setattr(text, key, value)
    torch.manual_seed(0)
    model = getattr(tf, architecture)(config).eval()
    if getattr(model, "logit_bias", None) is not None:  # SigLIP's own starting point (scale 10, bias -10), not 1 and 0
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
    model.config.architectures = [architecture]
    model.save_pretrained(folder, safe_serialization=True)
    processors()[processor].save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def save_tiny_vision_type(model_type: str, task: str, folder: Path, shrink) -> Path:
    """For the coverage sweep: a tiny random-init model of any `model_type` for `task` ("image-cls": its
    image-classification head, "image-encoder": its base model, "zero-shot": its dual encoder), saved with the (PIL) image processor transformers
    maps to the type (its defaults, size and crop set to IMAGE; ViTImageProcessor where transformers maps none).
    `shrink(config_class)` makes the tiny config with image_size IMAGE (benchmarks/coverage.py's)."""
    import torch
    import transformers as tf
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto import modeling_auto as auto

    config = shrink(CONFIG_MAPPING[model_type])  # image_size among the sizes it sets
    if task == "image-cls":
        config.num_labels = len(LABELS)
        config.id2label = dict(enumerate(LABELS))
        config.label2id = {label: i for i, label in enumerate(LABELS)}
    names = {"image-cls": auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
             "zero-shot": auto.MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES}.get(task, auto.MODEL_MAPPING_NAMES)
    name = names[model_type]
    name = name[0] if isinstance(name, (list, tuple)) else name
    torch.manual_seed(0)
    model = getattr(tf, name)(config).eval()
    model.config.architectures = [name]
    model.save_pretrained(folder, safe_serialization=True)
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or ()  # 4.x: (slow, fast); 5.x: {"pil": ..., ...}
    names = [names.get("pil")] + list(names.values()) if isinstance(names, dict) else list(names)
    processor = getattr(tf, next((n for n in names if n), "ViTImageProcessor"))()
    size = getattr(processor, "size", None) or {}
    if "shortest_edge" in size:
        processor.size = {"shortest_edge": IMAGE}
    elif "height" in size:
        processor.size = {"height": IMAGE, "width": IMAGE}
    if getattr(processor, "crop_size", None):
        processor.crop_size = {"height": IMAGE, "width": IMAGE}
    processor.save_pretrained(folder)
    return Path(folder)
