"""Real photographs for a vision model's golden I/O, gates and calibration, available offline: the sample
images that ship inside scikit-image (`skimage.data`: photographs, scans, micrographs; PNG, JPEG; colour,
grayscale and RGBA), read by edgetx's own torch-free loader (edgetx.runtimes.image), as the runtime reads files.

The golden set, the gates' held-out set and the calibration set are drawn from different photographs; the
held-out and calibration sets add a mirror image and two crops of each of theirs, so that they hold as many
images as the gates need.
"""

from __future__ import annotations

from pathlib import Path

# file names in skimage's data folder (what skimage.data.astronaut(), .coffee(), ... read)
GOLDEN = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "logo.png")  # logo: RGBA
HELD_OUT = ("hubble_deep_field.jpg", "ihc.png", "retina.jpg", "motorcycle_left.png", "clock_motion.png", "coins.png",
            "page.png", "brick.png", "grass.png", "gravel.png", "cell.png", "text.png")
CALIBRATION = ("motorcycle_right.png", "moon.png", "color.png", "microaneurysms.png")


def photo_folder() -> Path:
    """The folder of scikit-image's bundled sample images (building a vision bundle needs scikit-image)."""
    try:
        import skimage.data
    except ImportError:
        from edgetx.errors import EdgetxError

        raise EdgetxError("building a vision bundle needs scikit-image (its sample photographs are the golden and "
                          "held-out images): pip install scikit-image") from None
    return Path(skimage.data.__file__).parent


def golden_paths() -> list[Path]:
    """The golden photographs (different sizes and aspect ratios; one grayscale, one RGBA)."""
    return [photo_folder() / name for name in GOLDEN]


def variants(names: tuple[str, ...]):
    """Each named photograph as RGB PIL images: whole, mirrored, its top-left and its bottom-right 70% crop."""
    from PIL import ImageOps

    from edgetx.runtimes.image import load_image

    out = []
    for name in names:
        image = load_image(photo_folder() / name)
        w, h = image.size
        out += [image, ImageOps.mirror(image), image.crop((0, 0, int(0.7 * w), int(0.7 * h))),
                image.crop((w - int(0.7 * w), h - int(0.7 * h), w, h))]
    return out


def held_out_images() -> list:
    """48 images for the quantization gates (none of them golden or calibration photographs)."""
    return variants(HELD_OUT)


def calibration_images() -> list:
    """16 images for static quantization's calibration (photographs neither golden nor held out)."""
    return variants(CALIBRATION)
