"""Vision models: torch-free image pre-processing against transformers' processors on real photos, which folders
transformers' registries make vision models, and tiny random-init ViT, DeiT, BEiT, Swin (image classification),
DINOv2 and the CLIP and SigLIP vision towers (image encoders) built, verified and run torch-free like PyTorch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import backend_or_skip, run_python
from vision_models import ARCHITECTURES, DUAL_ENCODERS, LABELS, processors, save_tiny_dual, save_tiny_vision
from edgetx.build import build
from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.errors import EdgetxError
from edgetx.kinds import get_kind
from edgetx.runtimes import Session
from edgetx.runtimes.image import ImagePreprocessor, load_image
from edgetx.verify.parity import verify

DATA = Path(__import__("skimage.data").data.__file__).parent
# sizes 14x25 .. 1000x872, portrait and landscape; RGB PNG/JPEG, grayscale, RGBA, a multi-frame palette GIF
PHOTOS = ["astronaut.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "motorcycle_right.png", "camera.png",
          "page.png", "logo.png", "no_time_for_that_tiny.gif"]
ENCODERS = ("Dinov2Model", "CLIPModel", "SiglipModel")
TRANSFORMERS_5 = int(__import__("transformers").__version__.split(".")[0]) >= 5


def _transparent_photo(folder: Path) -> Path:
    """The coffee photo as an RGBA PNG whose alpha falls from opaque (left) to transparent (right)."""
    rgb = np.asarray(Image.open(DATA / "coffee.png").convert("RGB"))
    alpha = np.broadcast_to(np.linspace(255, 0, rgb.shape[1]).astype(np.uint8), rgb.shape[:2])
    path = folder / "coffee-rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return path


def _their_input(path: Path, processor) -> Image.Image:
    """What transformers' processor is given for a file: the image as Pillow opens it where the processor converts
    to RGB itself and its conversion is the one edgetx does (transformers 5 composites transparency onto white,
    4.x drops the alpha channel), else the RGB image edgetx converted (the others refuse 1- and 4-channel input)."""
    raw = Image.open(path)
    has_alpha = "A" in raw.getbands() or raw.info.get("transparency") is not None
    if getattr(processor, "do_convert_rgb", False) and (TRANSFORMERS_5 or not has_alpha):
        return raw
    return load_image(path)


# --- fast: pre-processing, registries, kinds ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(processors()))
def test_preprocessing_matches_transformers_on_real_photos(name, tmp_path):
    """edgetx's pixel_values equal the slow (PIL) processor's for each architecture's processor, from files and
    from arrays. Measured on transformers 4.57.6: max |diff| 0.0 (bit-identical) for all seven processors and
    every photo: the resize is the same PIL call and rescale/normalize the same float64 -> float32 arithmetic;
    1e-6 leaves room for a numpy that orders the float32 subtraction differently."""
    processor = processors()[name]
    ours = ImagePreprocessor(json.loads(processor.to_json_string()))
    paths = [DATA / p for p in PHOTOS] + [_transparent_photo(tmp_path)]
    worst = 0.0
    for path in paths:
        want = processor(_their_input(path, processor), return_tensors="np")["pixel_values"]
        got = ours([path])
        assert got.shape == want.shape == (1, 3, 32, 32) and got.dtype == np.float32, (path.name, got.shape)
        worst = max(worst, float(np.abs(got - want).max()))
        array = np.asarray(Image.open(path).convert("RGB"))  # an HxWx3 uint8 array: the same pixels
        if "A" not in Image.open(path).getbands():
            np.testing.assert_array_equal(ours([array]), got)
    assert worst <= 1e-6, worst
    grey = np.asarray(Image.open(DATA / "camera.png"))  # HxW uint8 arrays are grey images
    np.testing.assert_array_equal(ours([grey]), ours([DATA / "camera.png"]))


def test_preprocessing_refuses_what_it_does_not_do():
    config = json.loads(processors()["ViTImageProcessor"].to_json_string())
    with pytest.raises(EdgetxError, match="do_flip_channel_order, which edgetx's image pre-processing does not do"):
        ImagePreprocessor({**config, "do_flip_channel_order": True})
    with pytest.raises(EdgetxError, match="size"):
        ImagePreprocessor({**config, "size": {"max_height": 32}})
    assert ImagePreprocessor({**config, "size": 32}).output_size == (32, 32)  # an int is a square
    assert ImagePreprocessor({**config, "size": {"shortest_edge": 32}}).output_size is None  # aspect kept: varies
    with pytest.raises(EdgetxError, match="HxWx3"):
        ImagePreprocessor(config)([np.zeros((8, 8, 3), np.float32)])


def test_transformers_registries_say_which_folders_are_vision_models():
    import transformers as tf

    from edgetx.exporters.hf_vision import vision_task

    def task(config, architecture):
        config.architectures = [architecture]
        found = vision_task(config)
        return found and (found.kind, found.model_class.__name__, found.tower)

    assert task(tf.ViTConfig(), "ViTForImageClassification") == ("image-classification", "ViTForImageClassification",
                                                                 False)
    assert task(tf.DeiTConfig(), "DeiTForImageClassificationWithTeacher")[0] == "image-classification"
    assert task(tf.ViTConfig(), "ViTForMaskedImageModeling") == ("image-encoder", "ViTModel", False)  # its backbone
    assert task(tf.Dinov2Config(), "Dinov2Model") == ("image-encoder", "Dinov2Model", False)
    assert task(tf.CLIPConfig(), "CLIPModel") == ("image-encoder", "CLIPVisionModelWithProjection", True)
    assert task(tf.SiglipConfig(), "SiglipModel") == ("image-encoder", "SiglipVisionModel", True)
    assert task(tf.ImageGPTConfig(), "ImageGPTForImageClassification") is None  # colour-cluster ids, not pixels
    assert task(tf.BertConfig(), "BertForSequenceClassification") is None
    assert task(tf.LlamaConfig(), "LlamaForCausalLM") is None


def test_a_vision_folder_edgetx_cannot_feed_is_refused_before_export(tmp_path):
    """No processor config, one whose output size follows each photo's aspect ratio, one asking for a step edgetx
    does not do, one whose images the model cannot take: each a one-line reason, and no bundle."""
    folder = save_tiny_vision("ViTForImageClassification", tmp_path / "model")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    for edit, message in [(None, "no preprocessor_config.json"),
                          ({"size": {"shortest_edge": 32}}, "different sizes; edgetx exports a graph of fixed H and W"),
                          ({"do_flip_channel_order": True}, "asks for do_flip_channel_order"),
                          ({"size": {"height": 48, "width": 48}}, "does not run on the 48x48 images its image processor")]:
        (folder / "preprocessor_config.json").unlink(missing_ok=True)
        if edit is not None:
            (folder / "preprocessor_config.json").write_text(json.dumps({**config, **edit}))
        result = CliRunner().invoke(main, ["build", str(folder), "--out", str(tmp_path / "bundle")])
        assert result.exit_code == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "bundle").exists()


def test_vision_kinds_are_registered_with_their_helpers():
    assert get_kind("image-classification").helpers == {"classify_image"}
    assert get_kind("image-encoder").helpers == {"embed_image"}
    assert get_kind("zero-shot-image-classification").helpers == {"embed_image", "embed_text", "zero_shot"}
    assert get_kind("zero-shot-image-classification").components == ("text",)
    pixels = [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    logits = [{"name": "logits", "dtype": "float32", "shape": ["batch", 5]}]
    assert get_kind("image-classification").io_problem(pixels, logits) is None
    assert "'embeddings'" in get_kind("image-encoder").io_problem(pixels, logits)
    free = [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, "h", "w"]}]
    assert "H, W fixed" in get_kind("image-classification").io_problem(free, logits)


def test_runtime_image_path_imports_without_torch():
    result = run_python("import sys; sys.modules['torch'] = None\n"
                        "import edgetx.runtimes.image, edgetx.kinds.vision, edgetx.kinds.zero_shot, edgetx.cli.vision\n"
                        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]")
    assert result.returncode == 0, result.stderr


def test_vision_verbs_help_shows_examples():
    for verb in ("classify-image", "embed-image", "zero-shot"):
        result = CliRunner().invoke(main, [verb, "--help"])
        assert result.exit_code == 0 and f"edgetx {verb} dist/" in result.output and "--json" in result.output


# --- slow: each architecture built, verified, and run like PyTorch ---------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """architecture -> (model folder, bundle), built once per module; breadth, so fp32 only and unfused (the
    full default build is its own test)."""
    cache = {}

    def get(architecture: str):
        if architecture not in cache:
            root = tmp_path_factory.mktemp(architecture)
            folder = save_tiny_vision(architecture, root / "model")
            cache[architecture] = folder, build(folder, root / "bundle", optimize=False, quantize=())
        return cache[architecture]

    return get


@torch.no_grad()
def _pytorch(folder: Path, architecture: str, paths: list[Path]) -> np.ndarray:
    """PyTorch's answer as a transformers user gets it: the slow processor's pixel_values into the model loaded by
    its own class (logits; get_image_features of a dual encoder; pooler_output of a bare model)."""
    import transformers as tf

    processor = tf.AutoImageProcessor.from_pretrained(folder, use_fast=False)
    pixels = processor([load_image(p) for p in paths], return_tensors="pt")["pixel_values"]
    model = getattr(tf, architecture).from_pretrained(folder, dtype=torch.float32).eval()
    if architecture in ("CLIPModel", "SiglipModel"):  # transformers 5 returns them as the outputs' pooler_output
        features = model.get_image_features(pixel_values=pixels)
        return getattr(features, "pooler_output", features).numpy()
    out = model(pixel_values=pixels)
    return (out.logits if hasattr(out, "logits") else out.pooler_output).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_builds_verifies_and_runs_like_pytorch(built, architecture):
    folder, bundle = built(architecture)
    encoder = architecture in ENCODERS
    model, block = bundle.model, bundle.manifest["preprocessor"]
    assert model["kind"] == ("image-encoder" if encoder else "image-classification") and model["image_size"] == [32, 32]
    assert block["type"] == "image" and block["file"] in bundle.manifest["files"] and block["image_size"] == [32, 32]
    assert block["max_abs_vs_transformers"] == 0.0 and bundle.manifest["tokenizer"]["type"] == "ids"
    assert json.loads(bundle.file(block["file"]).read_text()) == json.loads(
        (folder / "preprocessor_config.json").read_text())
    parity = bundle.variant("fp32").parity
    assert parity["passed"] and {c["name"] for c in parity["checks"]} == (
        {"embeddings", "rows alone"} if encoder else {"logits", "labels", "rows alone"}), parity
    assert all(r.passed for r in verify(Bundle.load(bundle.path)))
    paths = [DATA / p for p in ("chelsea.png", "hubble_deep_field.jpg", "camera.png", "no_time_for_that_tiny.gif")]
    want = _pytorch(folder, architecture, paths)
    session = Session(bundle.path)
    tolerance = bundle.variant("fp32").tolerance["max_abs"]  # measured at build: 10x the PyTorch-vs-ORT spread
    images = paths[:-1] + [np.asarray(load_image(paths[-1]))]  # files and an HxWx3 uint8 array
    if encoder:
        assert model["embedding_from"] == {"Dinov2Model": "pooler_output", "CLIPModel": "image_embeds",
                                           "SiglipModel": "pooler_output"}[architecture]
        got = session.embed_image(images, batch_size=3)
        assert got.shape == (4, model["embedding_dim"]) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)
        with pytest.raises(EdgetxError, match="classify_image needs an image classifier"):
            session.classify_image(paths)
    else:
        got = session.classify_image(images, batch_size=3)
        assert model["labels"] == list(LABELS) and [r["label"] for r in got] == [LABELS[i] for i in want.argmax(-1)]
        probs = np.exp(want - want.max(-1, keepdims=True))
        np.testing.assert_allclose([list(r["scores"].values()) for r in got], probs / probs.sum(-1, keepdims=True),
                                   atol=tolerance, rtol=0)
        with pytest.raises(EdgetxError, match="embed_image needs an image encoder"):
            session.embed_image(paths)


@pytest.mark.slow
def test_cli_classifies_and_embeds_images_like_the_session(built):
    _, classifier = built("ViTForImageClassification")
    _, encoder = built("CLIPModel")
    paths = [str(DATA / "astronaut.png"), str(DATA / "rocket.jpg")]
    result = CliRunner().invoke(main, ["classify-image", str(classifier.path), *paths, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["image"] for r in rows] == paths
    assert [r["label"] for r in rows] == [r["label"] for r in Session(classifier.path).classify_image(paths)]
    result = CliRunner().invoke(main, ["classify-image", str(classifier.path), paths[0], "--top", "2"])
    assert result.exit_code == 0 and rows[0]["label"] in result.stdout
    result = CliRunner().invoke(main, ["embed-image", str(encoder.path), *paths, "--json"])
    assert result.exit_code == 0, result.output
    vectors = np.array([r["embedding"] for r in json.loads(result.stdout)])
    np.testing.assert_allclose(vectors, Session(encoder.path).embed_image(paths), atol=1e-6)
    result = CliRunner().invoke(main, ["embed-image", str(encoder.path), paths[0]])
    assert result.exit_code == 0 and "norm" in result.stdout


@pytest.mark.slow
def test_an_image_bundle_runs_with_torch_absent(built):
    _, bundle = built("SwinForImageClassification")
    code = f"""import sys; sys.modules['torch'] = None
from edgetx.bundle import Bundle
from edgetx.runtimes import Session
from edgetx.verify.parity import verify
assert all(r.passed for r in verify(Bundle.load({str(bundle.path)!r})))
print(Session({str(bundle.path)!r}).classify_image([{str(DATA / 'coffee.png')!r}])[0]["label"])
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == Session(bundle.path).classify_image([DATA / "coffee.png"])[0]["label"]


@pytest.mark.slow
def test_bad_inputs_get_one_line_edgetx_errors(built, tmp_path):
    _, classifier = built("ViTForImageClassification")
    _, encoder = built("Dinov2Model")
    (tmp_path / "notes.txt").write_text("a photo of a cat\n")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes((DATA / "rocket.jpg").read_bytes()[:2000])
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    cases = [
        (["classify-image", str(classifier.path), str(tmp_path / "missing.jpg")], "missing.jpg: no such image file"),
        (["classify-image", str(classifier.path), str(tmp_path / "notes.txt")], "not an image Pillow can read"),
        (["classify-image", str(classifier.path), str(tmp_path / "empty.png")], "the file is empty (0 bytes)"),
        (["classify-image", str(classifier.path), str(tmp_path / "cut.jpg")], "could not be decoded"),
        (["classify-image", str(classifier.path), str(tmp_path / "fake.png")], re.compile("could not|not an image")),
        (["classify-image", str(classifier.path), "a photo of a cat"], "a photo of a cat: no such image file"),
        (["classify-image", str(classifier.path)], "no images given"),
        (["embed", str(encoder.path), "a sentence"], "embed needs an encoder (this one offers embed_image)"),
        (["classify", str(classifier.path), "a sentence"], "classify needs a sequence classifier"),
        (["embed-image", str(classifier.path), str(DATA / "coffee.png")], "embed_image needs an image encoder"),
        (["classify-image", str(tmp_path), str(DATA / "coffee.png")], "manifest.json is missing"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        assert re.search(message if isinstance(message, re.Pattern) else re.escape(message), result.stderr) and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    session = Session(classifier.path)
    for images, message in [("coffee.png", "non-empty list"), ([], "non-empty list"), ([3], "not int"),
                            ([np.zeros((4, 4), np.float32)], "uint8")]:
        with pytest.raises(EdgetxError, match=message):
            session.classify_image(images)
    with pytest.raises(EdgetxError, match="input 'pixel_values': axis 2 should be 32"):
        session.run({"pixel_values": np.zeros((1, 3, 16, 16), np.float32)})


@pytest.mark.slow
def test_full_default_build_gates_on_real_images(tmp_path):
    """ViT with the defaults: fused candidates, then the kind's default schemes, each behind its gate (static QDQ
    int8 calibrated on real photos, and dynamic int8); verify, bench (images/s), the report and a fixed-shape copy.
    Measured on this tiny model (hidden 64, 48 held-out images): int8-static-minmax top-1 1.000, KL 0.0015;
    int8 top-1 1.000, KL 0.0026 (int8-static-entropy/-percentile, int8-outliers, int4 and fp16 pass too; qdq-a8w8,
    every op quantized for NPUs, misses: top-1 0.875)."""
    folder = save_tiny_vision("ViTForImageClassification", tmp_path / "model")
    bundle = build(folder, tmp_path / "bundle")
    results = bundle.manifest["quantization"]["results"]
    assert set(results) == set(get_kind("image-classification").default_schemes) >= {"int8-static-minmax"}
    for name, result in results.items():
        assert result["gate"]["rows"] == 48 and result["gate_passed"], (name, result)
        assert name in bundle.variants and bundle.variant(name).parity["passed"]
    assert results["int8-static-minmax"]["scheme"]["method"] == "static"
    assert bundle.manifest["optimization"]["candidates"]
    assert all(r.passed for r in verify(Bundle.load(bundle.path)))
    photo = str(DATA / "chelsea.png")
    labels = {v: Session(bundle.path, variant=v).classify_image([photo])[0]["label"] for v in bundle.variants}
    assert len(set(labels.values())) == 1, labels
    runner = CliRunner()
    result = runner.invoke(main, ["bench", str(bundle.path), "--threads", "1", "--repeats", "2", "--batch-sizes",
                                  "1,4", "--json"])
    assert result.exit_code == 0, result.output
    assert all([b["batch"] for b in r["batches"]] == [1, 4] and r["batches"][1]["images_per_s"] > 0
               for r in json.loads(result.stdout))
    result = runner.invoke(main, ["report", str(bundle.path), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "image label agreement vs fp32" in (bundle.path / "report.md").read_text()
    result = runner.invoke(main, ["convert", str(bundle.path), "--to", "fixed", "--shape", "batch=1", "--variant", "fp32"])
    assert result.exit_code == 0, result.output
    assert Bundle.load(bundle.path).variant("fp32").fixed_shape["dims"] == {"batch": 1}


# --- image-text dual encoders (CLIP, SigLIP saved with their tokenizer): both towers, zero-shot labels -------------

PROMPT_LABELS = ["a cat", "an astronaut", "a rocket", "a cup of coffee"]


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    """architecture -> (model folder, bundle): fp32 only, unfused (the default build is its own test)."""
    cache = {}

    def get(architecture: str):
        if architecture not in cache:
            root = tmp_path_factory.mktemp(f"dual-{architecture}")
            folder = save_tiny_dual(architecture, root / "model")
            cache[architecture] = folder, build(folder, root / "bundle", optimize=False, quantize=())
        return cache[architecture]

    return get


@torch.no_grad()
def _pytorch_zero_shot(folder: Path, paths: list[Path], texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image features, text features, label probabilities) as transformers' zero-shot pipeline computes them: the
    slow processor, the tokenizer padded as the pipeline pads it (SigLIP: to the full length), the model's own
    logits_per_image, a softmax (a sigmoid for SigLIP)."""
    import transformers as tf

    model = tf.AutoModelForZeroShotImageClassification.from_pretrained(folder, dtype=torch.float32).eval()
    siglip = model.config.model_type == "siglip"
    pixels = tf.AutoImageProcessor.from_pretrained(folder, use_fast=False)(
        [load_image(p) for p in paths], return_tensors="pt")["pixel_values"]
    tokens = tf.AutoTokenizer.from_pretrained(folder)(texts, return_tensors="pt", truncation=True,
                                                      padding="max_length" if siglip else True)
    out = model(pixel_values=pixels, **tokens)
    probs = torch.sigmoid(out.logits_per_image) if siglip else out.logits_per_image.softmax(-1)
    return out.image_embeds.numpy(), out.text_embeds.numpy(), probs.numpy()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("architecture", DUAL_ENCODERS)
def test_dual_encoders_export_both_towers_and_label_like_pytorch(dual, architecture):
    folder, bundle = dual(architecture)
    model = bundle.model
    assert model["kind"] == "zero-shot-image-classification" and set(bundle.io["components"]) == {"text"}
    assert bundle.variant("fp32").components == {"text": "fp32/text.onnx"}
    siglip = architecture == "SiglipModel"
    # measured on the model, not assumed: SigLIP pools the last position without a mask and has a learned bias
    assert model["text_padding"] == ("max_length" if siglip else "longest")
    assert model["zero_shot"]["probabilities"] == ("sigmoid" if siglip else "softmax")
    assert (model["zero_shot"]["logit_bias"] == pytest.approx(-10.0, abs=1e-4)) if siglip else \
        model["zero_shot"]["logit_bias"] == 0.0
    parity = bundle.variant("fp32").parity
    assert parity["passed"] and {c["name"] for c in parity["checks"]} == {
        "embeddings", "rows alone", "text embeddings", "text rows alone", "zero-shot logits"}, parity
    assert all(r.passed for r in verify(Bundle.load(bundle.path)))
    paths = [DATA / p for p in ("chelsea.png", "astronaut.png", "rocket.jpg")]
    texts = [f"This is a photo of {label}." for label in PROMPT_LABELS]
    want_images, want_texts, want_probs = _pytorch_zero_shot(folder, paths, texts)
    session = Session(bundle.path)
    tolerance = bundle.variant("fp32").tolerance["max_abs"]
    np.testing.assert_allclose(_unit(session.embed_image(paths)), _unit(want_images), atol=tolerance, rtol=0)
    np.testing.assert_allclose(_unit(session.embed_text(texts, batch_size=3)), _unit(want_texts), atol=tolerance, rtol=0)
    got = session.zero_shot(paths, PROMPT_LABELS, batch_size=2)
    assert [list(r["scores"]) for r in got] == [PROMPT_LABELS] * len(paths)
    np.testing.assert_allclose([list(r["scores"].values()) for r in got], want_probs, atol=1e-4, rtol=0)
    assert [r["label"] for r in got] == [PROMPT_LABELS[i] for i in want_probs.argmax(-1)]
    # the CLI gives the same scores; `edgetx embed` takes the text tower; nothing of it needs torch
    result = CliRunner().invoke(main, ["zero-shot", str(bundle.path), *map(str, paths), *sum(
        (["--label", label] for label in PROMPT_LABELS), []), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["scores"] for r in json.loads(result.stdout)] == [r["scores"] for r in got]
    result = CliRunner().invoke(main, ["embed", str(bundle.path), texts[0]])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(json.loads(result.stdout)[0]["embedding"], session.embed_text(texts[:1])[0], atol=1e-6)
    code = f"""import sys, json; sys.modules['torch'] = None
from edgetx.runtimes import Session
print(json.dumps(Session({str(bundle.path)!r}).zero_shot({[str(p) for p in paths]!r}, {PROMPT_LABELS!r})))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose([list(r["scores"].values()) for r in json.loads(result.stdout)],
                               [list(r["scores"].values()) for r in got], atol=1e-6)


@pytest.mark.slow
def test_dual_encoder_bad_inputs_get_one_line_errors(dual, built):
    _, bundle = dual("CLIPModel")
    _, encoder = built("Dinov2Model")
    photo = str(DATA / "coffee.png")
    cases = [
        (["zero-shot", str(bundle.path), photo], "no labels given"),
        (["zero-shot", str(bundle.path), photo, "--label", "cat", "--label", "cat"], "labels repeat (cat)"),
        (["zero-shot", str(bundle.path), photo, "--label", "cat", "--template", "a photo"], "must contain '{}' once"),
        (["zero-shot", str(bundle.path), "a photo of a cat", "--label", "cat"], "a photo of a cat: no such image file"),
        (["zero-shot", str(encoder.path), photo, "--label", "cat"], "zero_shot needs an image-text dual encoder"),
        (["embed", str(encoder.path), "a cat"], "embed needs an encoder"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.stderr, (args, result)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    session = Session(bundle.path)
    for labels, message in [("cat", "non-empty list of labels"), ([], "non-empty list of labels"),
                            (["cat", ""], "non-empty list of labels")]:
        with pytest.raises(EdgetxError, match=message):
            session.zero_shot([photo], labels)
    with pytest.raises(EdgetxError, match="embed_text takes a non-empty list of strings"):
        session.embed_text("a cat")


@pytest.mark.slow
def test_dual_encoder_default_build_gates_both_towers(tmp_path):
    """SigLIP with the defaults: static int8 calibrated per tower (photos for the vision graph, prompts for the text
    graph) and dynamic int8, each judged by both towers' cosine on held-out photos and prompts."""
    folder = save_tiny_dual("SiglipModel", tmp_path / "model")
    bundle = build(folder, tmp_path / "bundle")
    results = bundle.manifest["quantization"]["results"]
    assert set(results) == set(get_kind("zero-shot-image-classification").default_schemes)
    for name, result in results.items():
        gate = result["gate"]
        assert result["gate_passed"] and gate["rows"] == 48 + 24, (name, result)
        assert min(gate["image_cosine_mean"], gate["text_cosine_mean"]) == gate["cosine_mean"] >= 0.99
        assert name in bundle.variants and bundle.variant(name).parity["passed"]
        assert set(bundle.variant(name).components) == {"text"}
    assert results["int8-static-minmax"]["scheme"]["method"] == "static"
    assert all(r.passed for r in verify(Bundle.load(bundle.path)))
    photo = str(DATA / "chelsea.png")
    scores = {v: Session(bundle.path, variant=v).zero_shot([photo], PROMPT_LABELS)[0]["scores"] for v in bundle.variants}
    for variant, row in scores.items():
        assert max(abs(row[k] - scores["fp32"][k]) for k in row) < 0.05, (variant, row, scores["fp32"])
    result = CliRunner().invoke(main, ["bench", str(bundle.path), "--threads", "1", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_dual_encoder_fixed_shape_copies_of_both_graphs_run_on_xnnpack(dual, tmp_path):
    """`convert --to fixed` writes a fixed copy of each graph (the text graph's dims too: CLIP's text length is
    dynamic), each checked against its dynamic graph; XNNPACK (fixed shapes only) then verifies both graphs. Its
    bias-less projections are MatMuls in the copies (onnxruntime 1.21's XNNPACK crashes loading such a Gemm)."""
    import shutil

    import onnx

    from edgetx.verify.parity import verify_matrix

    _, built_bundle = dual("CLIPModel")
    path = tmp_path / "clip"
    shutil.copytree(built_bundle.path, path)
    result = CliRunner().invoke(main, ["convert", str(path), "--to", "fixed", "--shape", "batch=1"])
    assert result.exit_code == 1 and "missing: seq" in result.stderr
    result = CliRunner().invoke(main, ["convert", str(path), "--to", "fixed", "--shape", "batch=1,seq=24"])
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(path)
    variant = bundle.variant("fp32")
    assert variant.formats["onnx-fixed"] == "fp32/model.fixed.onnx"
    assert variant.component_formats == {"text": {"onnx-fixed": "fp32/text.fixed.onnx"}}
    assert variant.fixed_shape["dims"] == {"batch": 1, "seq": 24} and "text:" in variant.fixed_shape["check"]
    text = onnx.load(bundle.file("fp32/text.fixed.onnx"))
    assert [d.dim_value for d in text.graph.input[0].type.tensor_type.shape.dim] == [1, 24]
    assert "Gemm" not in {n.op_type for n in text.graph.node}
    backend_or_skip("xnnpack")
    (report,) = verify_matrix(bundle, backends=["xnnpack"])
    assert report.passed and [c.name for c in report.checks] == ["vs ort-cpu at fixed dims",
                                                                 "vs ort-cpu at fixed dims (text)"], report.checks
