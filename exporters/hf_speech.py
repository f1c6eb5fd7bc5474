"""Hugging Face speech-to-text encoder-decoders (Whisper): log-mel features in, text out, over the seq2seq graphs.

The two graphs are edgetx.exporters.seq2seq's, with the encoder taking `input_features (batch, mels, frames)`. The
audio front end runs torch-free at run time (edgetx.runtimes.audio); the bundle keeps what it needs: the feature
extractor's settings and its mel filter bank (`audio/mel_filters.npy`, computed by transformers here, so the
runtime's features are transformers'). The decoder prompt (start, language and task tokens), the suppressed tokens
and the language/task ids come from the model's generation config. Golden I/O and the gates run on real speech
kept in edgetx (exporters/speech/: espeak-ng sentences, the first ones golden, the rest held out).
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from edgetx.exporters.hf import UnsupportedModel, _load_weights, _special_ids, export_with_eager_fallback
from edgetx.exporters.hf_seq2seq import _spec, seq2seq_forwards
from edgetx.exporters.seq2seq import capture_seq2seq_golden, export_seq2seq
from edgetx.exporters.source import ExportSource

GOLDEN_STEPS = 24
GATE_CLIPS = 9  # every held-out clip: ~90 words, a word error 1.1%


def is_speech_seq2seq(config, architecture: str = "") -> bool:
    """Whether transformers' registries call this model type a speech-to-text encoder-decoder."""
    from transformers.models.auto import modeling_auto as auto

    return bool(getattr(config, "is_encoder_decoder", False)) and \
        config.model_type in auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES


def speech_clips() -> list[dict]:
    """edgetx's real speech: [{file (a path), text, seconds, use ("golden" or "held-out")}]."""
    folder = resources.files("edgetx.exporters").joinpath("speech")
    listing = json.loads(folder.joinpath("clips.json").read_text())
    return [{**clip, "file": Path(str(folder.joinpath(clip["file"])))} for clip in listing["clips"]]


def _feature_extractor(folder: Path):
    """Whisper's log-mel extractor as the folder configures it; another front end is refused in one line."""
    from transformers import WhisperFeatureExtractor

    path = folder / "preprocessor_config.json"
    settings = json.loads(path.read_text()) if path.is_file() else {}
    kind = settings.get("feature_extractor_type", "WhisperFeatureExtractor")
    if kind != "WhisperFeatureExtractor":
        raise UnsupportedModel(f"{folder}: its audio front end is {kind}; edgetx computes Whisper's log-mel features "
                               "(WhisperFeatureExtractor) torch-free, and no other yet")
    known = {k: v for k, v in settings.items() if k in ("feature_size", "sampling_rate", "hop_length", "chunk_length",
                                                           "n_fft", "padding_value", "dither")}
    return WhisperFeatureExtractor(**known)


def _speech_settings(folder: Path, config, tokenizer) -> dict:
    """The decoder prompt and token rules of the model's generation config: start, language and task tokens
    (Whisper's forced ids), the tokens it never emits, and those it never emits first."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(folder)
    except (OSError, ValueError):
        generation = None

    def setting(name, default=None):
        value = getattr(generation, name, None) if generation is not None else None
        return value if value is not None else getattr(config, name, default)

    start = setting("decoder_start_token_id")
    if start is None:
        raise UnsupportedModel(f"{folder}: the config names no decoder_start_token_id")
    forced = sorted(setting("forced_decoder_ids") or [])
    prompt = [int(start)] + [int(token) for _, token in forced]
    languages = {code.strip("<|>"): int(i) for code, i in (setting("lang_to_id") or {}).items()}
    tasks = {name: int(i) for name, i in (setting("task_to_id") or {}).items()}
    eos = setting("eos_token_id")
    return {"prompt": prompt, "languages": languages, "tasks": tasks,
            "eos_token_ids": sorted({eos} if isinstance(eos, int) else set(eos or [])),
            "no_timestamps": setting("no_timestamps_token_id"),
            "suppress_tokens": [int(t) for t in setting("suppress_tokens") or []],
            "begin_suppress_tokens": [int(t) for t in setting("begin_suppress_tokens") or []]}


def speech_source(folder, config, tokenizer, tokenizer_files, *, source, source_sha256, kwargs,
                  trust_remote_code, architecture) -> ExportSource:
    """An ExportSource for a speech-to-text encoder-decoder (Whisper)."""
    from transformers import AutoModelForSpeechSeq2Seq

    from edgetx.runtimes.audio import log_mel_spectrogram, read_audio, resample

    extractor = _feature_extractor(folder)
    config._attn_implementation = "sdpa"
    notes: list[str] = []
    model = _load_weights(AutoModelForSpeechSeq2Seq, folder, config=config, dtype=torch.float32,
                          trust_remote_code=trust_remote_code, **kwargs)
    speech = _speech_settings(folder, config, tokenizer)
    encode, decode = seq2seq_forwards(model, speech["prompt"][0])
    frames = extractor.n_samples // extractor.hop_length
    inputs = (("input_features", "float32", ("batch", extractor.feature_size, frames)),)
    probe = {"input_features": torch.zeros(1, extractor.feature_size, frames)}
    max_target = int(getattr(config, "max_target_positions", None) or 448)
    spec = _spec(model, encode, decode, speech["prompt"][0], inputs, int(getattr(config, "max_source_positions", frames)),
                 max_target, architecture, probe=probe)
    mel_filters = np.asarray(extractor.mel_filters, np.float32)
    clips = speech_clips()

    def features(clip_list: list[dict]) -> np.ndarray:
        out = []
        for clip in clip_list:
            samples, rate = read_audio(clip["file"])
            samples = resample(samples, rate, extractor.sampling_rate) if rate != extractor.sampling_rate else samples
            out.append(log_mel_spectrogram(samples, mel_filters, extractor.n_fft, extractor.hop_length,
                                           extractor.n_samples))
        return np.stack(out).astype(np.float32)

    def export(path: Path, opset: int) -> None:
        export_with_eager_fallback(model, lambda: export_seq2seq(model, spec, encode, decode, path, opset), notes)

    golden_clips = [c for c in clips if c["use"] == "golden"]
    held_out = [c for c in clips if c["use"] == "held-out"][:GATE_CLIPS]

    def golden():
        arrays = capture_seq2seq_golden(encode, decode, spec, {"input_features": features(golden_clips)},
                                        speech["prompt"], GOLDEN_STEPS)
        return arrays, {"clips": [{"text": c["text"], "seconds": c["seconds"]} for c in golden_clips],
                        "decode_steps": GOLDEN_STEPS}

    def quant_data() -> dict[str, np.ndarray]:
        """Held-out speech for the gates, and which tokens start a word (word error rates without a tokenizer)."""
        vocab = spec.vocab_size
        pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab, len(tokenizer)))))
        starts = np.array([p.startswith(("Ġ", "▁", " ")) for p in pieces] + [True] * (vocab - len(pieces)))
        return {"eval.input_features": features(held_out), "eval.word_start": starts}

    mel_bytes = io.BytesIO()
    np.save(mel_bytes, mel_filters)
    audio = {"sampling_rate": int(extractor.sampling_rate), "n_fft": int(extractor.n_fft),
             "hop_length": int(extractor.hop_length), "n_samples": int(extractor.n_samples),
             "feature_size": int(extractor.feature_size), "mel_filters": "audio/mel_filters.npy"}
    facts = {"name": Path(source).name, "kind": "speech-recognition", "architecture": architecture,
             "model_type": config.model_type, "vocab_size": spec.vocab_size, "max_positions": spec.max_source_positions,
             "max_target_positions": max_target, "num_layers": spec.num_layers, "num_heads": spec.num_heads,
             "head_dim": spec.head_dim, "hidden_size": spec.d_model, "decoder_start_token_id": speech["prompt"][0],
             "audio": audio, "speech": speech, "parameters": sum(p.numel() for p in model.parameters())}
    tokenizer_block = _special_ids(tokenizer, config)
    return ExportSource(name=Path(source).name, kind="speech-recognition", model=facts, tokenizer=tokenizer_block,
                        io=spec.io_signature(), export=export, capture_golden=golden, quant_data=quant_data,
                        source=source, source_sha256=source_sha256, module=model, notes=notes,
                        extra_files={**tokenizer_files, "audio/mel_filters.npy": mel_bytes.getvalue()},
                        export_hint="If this architecture needs an adjustment, add a small named one in "
                                    "exporters/hf_speech.py.")
