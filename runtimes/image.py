"""Torch-free image pre-processing: what a vision model's `preprocessor_config.json` asks, done the way
transformers' (slow, PIL-based) image processors do it, with Pillow and numpy only.

Steps, in transformers' order: load (any format Pillow reads, EXIF orientation applied as transformers'
`load_image` does) -> RGB (transparency composited onto white, as transformers 5's `convert_to_rgb` does)
-> resize with the config's PIL filter (`size` as {"height", "width"}, {"shortest_edge"} (+ "longest_edge")
or an int = a square) -> center crop (`crop_size`, zero-padded where the image is smaller) -> rescale
(`rescale_factor`, in float64 then float32; minus 1 with `rescale_offset`) -> normalize (`image_mean`,
`image_std`, in float32; `include_top` divides by image_std once more, as EfficientNet's processor does) ->
channels first. `crop_pct` with a {"shortest_edge"} size and no crop step of its own is
ConvNextImageProcessor's rule (below 384: resize the short side to shortest_edge / crop_pct, then crop a
square; else resize to the square); with a crop step it is PoolFormer's (resize to size / crop_pct, then crop).
RGB conversion is always done: the graph takes three channels.

A config asking for a step not listed here (a `do_...` flag this module does not know, e.g. a channel flip)
is refused rather than silently skipped; the exporter also measures this module against transformers'
processor on real photos and records the difference in the manifest (`preprocessor.max_abs_vs_transformers`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from edgetx.errors import BundleError, InputError

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from edgetx.bundle import Bundle

ImageInput = Union[str, os.PathLike, np.ndarray, "PILImage.Image"]
PREPROCESSOR_FILE = "preprocessor/preprocessor_config.json"
# Steps this module performs, and flags that do not touch pixel_values (segmentation labels).
KNOWN_STEPS = frozenset({"do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"})
NOT_PIXELS = frozenset({"do_reduce_labels"})
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR: transformers' resize default


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise InputError("image bundles need Pillow: pip install pillow") from None
    return Image, ImageOps


def _size(value: Any, what: str) -> dict[str, int]:
    """A size as a dict: an int is a square (transformers' get_size_dict default), a dict is checked."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return {"height": value, "width": value}
    if isinstance(value, dict) and value and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                 for v in value.values()):
        keys = set(value)
        if keys in ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"}):
            return dict(value)
    raise BundleError(f"preprocessor {what} {value!r:.80} is not one edgetx knows: an int, {{height, width}} or "
                      "{shortest_edge[, longest_edge]} of positive ints")


def _triple(value: Any, what: str) -> np.ndarray:
    values = [value] * 3 if isinstance(value, (int, float)) else value
    if not isinstance(values, list) or len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
        raise BundleError(f"preprocessor {what} must be a number or three numbers (R, G, B), got {value!r:.80}")
    return np.array(values, dtype=np.float32)


@dataclass(frozen=True)
class ImagePreprocessor:
    """A vision model's pre-processing: images in, `pixel_values` (n, 3, H, W) float32 out."""

    config: dict

    def __post_init__(self) -> None:
        check_config(self.config)

    # --- the steps -----------------------------------------------------------------------------------

    def __call__(self, images: Sequence[ImageInput]) -> np.ndarray:
        """pixel_values (len(images), 3, H, W) float32 of file paths, uint8 arrays or PIL images."""
        if isinstance(images, (str, os.PathLike, np.ndarray)) or not isinstance(images, Sequence) or not images:
            raise InputError("give a non-empty list of images (file paths, HxWx3 uint8 arrays or PIL images)")
        arrays = [self.pixels(load_image(image)) for image in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise InputError(f"the images pre-process to different sizes {sorted(shapes)}; this model's "
                             "pre-processing keeps aspect ratios, so run them one at a time")
        return np.stack(arrays)

    def pixels(self, image: "PILImage.Image") -> np.ndarray:
        """One RGB image -> (3, H, W) float32."""
        c = self.config
        array = np.asarray(self.resized(image) if c.get("do_resize", True) else image)
        if c.get("do_center_crop") and c.get("crop_size") is not None:
            crop = _size(c["crop_size"], "crop_size")
            array = center_crop(array, crop["height"], crop["width"])
        if c.get("do_rescale", True):
            array = (array.astype(np.float64) * float(c.get("rescale_factor", 1 / 255))).astype(np.float32)
            if c.get("rescale_offset"):  # EfficientNet's: [0, 255] * 1/127.5 - 1 = [-1, 1]
                array = array - np.float32(1)
        array = array.astype(np.float32)
        if c.get("do_normalize", True):
            array = (array - _triple(c["image_mean"], "image_mean")) / _triple(c["image_std"], "image_std")
            if c.get("include_top"):  # EfficientNet's processor normalizes again with mean 0
                array = array / _triple(c["image_std"], "image_std")
        return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)

    def resized(self, image: "PILImage.Image") -> "PILImage.Image | np.ndarray":
        """The resize step: to {height, width}, the short side to shortest_edge, or ConvNext's / PoolFormer's
        crop_pct rule."""
        c = self.config
        size = _size(c.get("size"), "size")
        resample = BILINEAR if c.get("resample") is None else int(c["resample"])
        if "shortest_edge" in size and c.get("crop_pct") is not None and "do_center_crop" not in c:
            edge = size["shortest_edge"]
            if edge >= 384:  # ConvNextImageProcessor: warp to the square, no crop
                return _resize(image, edge, edge, resample)
            height, width = short_side_size(image.height, image.width, int(edge / float(c["crop_pct"])))
            return center_crop(np.asarray(_resize(image, height, width, resample)), edge, edge)
        if c.get("crop_pct") is not None and c.get("do_center_crop"):  # PoolFormer's rule: size / crop_pct, then crop
            crop_pct = float(c["crop_pct"])
            if "shortest_edge" in size or size["height"] == size["width"]:
                edge = size["shortest_edge"] if "shortest_edge" in size else size["height"]
                height, width = short_side_size(image.height, image.width, int(edge / crop_pct))
            else:
                height, width = int(size["height"] / crop_pct), int(size["width"] / crop_pct)
        elif "shortest_edge" in size:
            height, width = short_side_size(image.height, image.width, size["shortest_edge"], size.get("longest_edge"))
        else:
            height, width = size["height"], size["width"]
        return _resize(image, height, width, resample)

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(H, W) every image comes out at, or None when it depends on the image (aspect ratio kept, no crop)."""
        c = self.config
        if c.get("do_center_crop") and c.get("crop_size") is not None:
            crop = _size(c["crop_size"], "crop_size")
            return crop["height"], crop["width"]
        if not c.get("do_resize", True):
            return None
        size = _size(c.get("size"), "size")
        if "height" in size:
            return size["height"], size["width"]
        if c.get("crop_pct") is not None and "do_center_crop" not in c:
            return size["shortest_edge"], size["shortest_edge"]
        return None


def check_config(config: object, where: object = "preprocessor config") -> None:
    """Refuse a config this module cannot follow: not an object, a step it does not know, bad sizes."""
    if not isinstance(config, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(config).__name__}")
    unknown = sorted(k for k, v in config.items() if k.startswith("do_") and v and k not in KNOWN_STEPS | NOT_PIXELS)
    if unknown:
        raise BundleError(f"{where} asks for {', '.join(unknown)}, which edgetx's image pre-processing does not do "
                          f"(it does: {', '.join(sorted(KNOWN_STEPS))})")
    if config.get("do_resize", True):
        _size(config.get("size"), "size")
    if config.get("do_center_crop") and config.get("crop_size") is not None:
        _size(config["crop_size"], "crop_size")
    if config.get("do_normalize", True):
        _triple(config.get("image_mean"), "image_mean")
        _triple(config.get("image_std"), "image_std")
    resample = config.get("resample")
    if resample is not None and (not isinstance(resample, int) or not 0 <= resample <= 5):
        raise BundleError(f"{where}: resample {resample!r:.40} is not a PIL filter code (0-5)")


def short_side_size(height: int, width: int, short: int, longest: int | None = None) -> tuple[int, int]:
    """(height, width) with the short side at `short`, aspect kept (transformers' get_resize_output_image_size,
    default_to_square=False), the long side capped at `longest` when given."""
    small, large = (width, height) if width <= height else (height, width)
    new_short, new_long = short, int(short * large / small)
    if longest is not None and new_long > longest:
        new_short, new_long = int(longest * new_short / new_long), longest
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _resize(image: "PILImage.Image", height: int, width: int, resample: int) -> "PILImage.Image":
    return image.resize((width, height), resample=resample, reducing_gap=None)


def center_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C) from the center, zero-padded where the image is smaller (transformers'
    center_crop)."""
    if array.ndim == 2:
        array = array[..., None]
    orig_h, orig_w = array.shape[:2]
    top, left = (orig_h - height) // 2, (orig_w - width) // 2
    if top >= 0 and left >= 0:
        return array[top : top + height, left : left + width]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    padded = np.zeros((new_h, new_w, array.shape[2]), array.dtype)
    top_pad, left_pad = math.ceil((new_h - orig_h) / 2), math.ceil((new_w - orig_w) / 2)
    padded[top_pad : top_pad + orig_h, left_pad : left_pad + orig_w] = array
    top, left = top + top_pad, left + left_pad
    return padded[max(0, top) : min(new_h, top + height), max(0, left) : min(new_w, left + width)]


def to_rgb(image: "PILImage.Image") -> "PILImage.Image":
    """RGB, with any transparency composited onto white (what a viewer shows; transformers 5's convert_to_rgb)."""
    Image, _ = _pil()
    if image.mode == "RGB":
        return image
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(item: ImageInput) -> "PILImage.Image":
    """An RGB PIL image from a file path (EXIF orientation applied), an (H, W[, 1|3|4]) uint8 array or a PIL image."""
    Image, ImageOps = _pil()
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)) \
                or 0 in item.shape:
            raise InputError(f"an image array must be HxWx3 (or HxW, HxWx1, HxWx4) uint8, got {item.dtype} of "
                             f"shape {list(item.shape)}")
        return to_rgb(Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item))
    if not isinstance(item, (str, os.PathLike)):
        raise InputError(f"an image must be a file path, a uint8 array or a PIL image, not {type(item).__name__}")
    path = Path(item)
    if not path.is_file():
        raise InputError(f"{str(path)[:200]}: no such image file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes), not an image")
    try:
        with Image.open(path) as opened:
            opened.load()
            return to_rgb(ImageOps.exif_transpose(opened))
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: refused, too many pixels ({e})") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read (is it a text file or damaged?)") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or malformed image data
        raise InputError(f"{path}: the image could not be decoded ({type(e).__name__}: {str(e)[:160]})") from None


def preprocessor_for(bundle: "Bundle") -> ImagePreprocessor:
    """The bundle's image pre-processing, from its hash-listed preprocessor config (the manifest's
    `preprocessor` block)."""
    where = bundle.path / "manifest.json"
    block = bundle.manifest.get("preprocessor")
    if not block:
        raise BundleError(f"{bundle.path}: this bundle carries no image pre-processor; feed pixel_values with "
                          "Session.run")
    rel = block["file"]
    if rel not in bundle.manifest.files:
        raise BundleError(f"{where}: preprocessor.file {rel!r} must name a file listed under 'files' (so its hash "
                          "is checked)")
    try:
        config = json.loads(bundle.file(rel).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{bundle.file(rel)}: not a readable JSON preprocessor config ({e})") from None
    check_config(config, bundle.file(rel))
    processor = ImagePreprocessor(config)
    if block.get("image_size") and processor.output_size not in (None, tuple(block["image_size"])):
        raise BundleError(f"{where}: preprocessor.image_size {block['image_size']} disagrees with its config's "
                          f"output size {list(processor.output_size)}; rebuild the bundle")
    return processor
