"""The speech-recognition kind (Whisper): audio in, text out, over the encoder-decoder graphs of edgetx.kinds.seq2seq.

The encoder takes log-mel features of 30 s windows (`input_features`), computed torch-free by edgetx.runtimes.audio
with the mel filter bank the bundle keeps (`model.audio`). Decoding starts from the model's prompt (start, language,
task and no-timestamps tokens: `model.speech`) and never emits the suppressed tokens, as transformers' generate does.
Parity is the encoder-decoder's (golden features of real speech); the gates add the word error rate of a quantized
variant's transcripts against fp32's on the bundle's held-out speech.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from edgetx.errors import InputError
from edgetx.kinds.base import BenchTable, register_kind
from edgetx.kinds.seq2seq import Seq2Seq, _io_inputs, _runs, greedy

MAX_WER = {"int8": 0.05, "int4": 0.10, "fp16": 0.02}  # word errors per fp32 word, on the held-out speech
WER_STEPS = 64  # tokens a held-out clip is transcribed to, at most


def suppression(speech: dict):
    """`adjust(logits, step)` that hides the tokens the model never emits (and those it never emits first)."""
    always = np.array(speech.get("suppress_tokens") or [], np.int64)
    first = np.array(speech.get("begin_suppress_tokens") or [], np.int64)

    def adjust(logits: np.ndarray, step: int) -> np.ndarray:
        logits[:, always[always < logits.shape[1]]] = -np.inf
        if step == 0:
            logits[:, first[first < logits.shape[1]]] = -np.inf
        return logits

    return adjust


def _words(tokens: list[int], word_start: np.ndarray) -> list[tuple[int, ...]]:
    """A token sequence as words: a word is the tokens from one word-starting token to the next."""
    words: list[list[int]] = []
    for token in tokens:
        if not words or (token < len(word_start) and word_start[token]):
            words.append([])
        words[-1].append(token)
    return [tuple(w) for w in words]


def word_errors(reference: list, hypothesis: list) -> int:
    """Levenshtein distance between two word sequences (substitutions + deletions + insertions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        current = [i]
        for j, other in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


def _until_end(row, eos: set[int]) -> list[int]:
    row = [int(t) for t in row]
    return row[: next((i for i, t in enumerate(row) if t in eos), len(row))]


@register_kind
class SpeechRecognition(Seq2Seq):
    name = "speech-recognition"
    described_as = "a speech-recognition model"
    helpers = frozenset({"transcribe"})
    truncates_text = False
    score = "encoder (one 30 s window) + 32 decode steps, median ms"

    def component_io_problem(self, component: str, inputs: list[dict], outputs: list[dict]) -> str | None:
        if component == "encoder" and [s["name"] for s in inputs] != ["input_features"]:
            return "the encoder graph of a speech model takes one input, input_features (batch, mels, frames)"
        return super().component_io_problem(component, inputs, outputs)

    def quantized_logits_agree(self, tolerance: Any, want_tokens, want_logits, got_logits, model: dict):
        """The KL bound on PyTorch's transcript tokens, up to its end token (what follows it is never read)."""
        eos = {int(t) for t in model["speech"].get("eos_token_ids") or []}
        keep = np.zeros(want_tokens.shape, bool)
        for row, tokens in enumerate(want_tokens):
            keep[row, : len(_until_end(tokens, eos)) + 1] = True
        ok, diff, detail = tolerance.compare_logits(want_logits[keep], got_logits[keep])
        return ok, diff, f"{detail} over {int(keep.sum())} transcript tokens"

    def gate_prompt(self, model: dict) -> list[int]:
        return list(model["speech"]["prompt"])

    def gate_metrics(self, reference, candidate, inputs, data: dict[str, np.ndarray], model: dict) -> dict[str, float]:
        """The encoder-decoder's (KL and top-1 of fp32's greedy tokens teacher-forced), and the word error rate of
        the variant's transcripts against fp32's, both decoded as transcribe does (suppressed tokens, end token)."""
        result = super().gate_metrics(reference, candidate, inputs, data, model)
        graph_inputs = _io_inputs(inputs)
        feeds = {"input_features": data["eval.input_features"]}
        speech = model["speech"]
        eos = {int(t) for t in speech.get("eos_token_ids") or []}
        prompt, adjust = self.gate_prompt(model), suppression(speech)
        want, _ = greedy(reference, graph_inputs, feeds, prompt, WER_STEPS, eos=eos, adjust=adjust)
        have, _ = greedy(candidate, graph_inputs, feeds, prompt, WER_STEPS, eos=eos, adjust=adjust)
        errors = words = 0
        for w, h in zip(want, have):
            ref, hyp = _words(_until_end(w, eos), data["eval.word_start"]), _words(_until_end(h, eos), data["eval.word_start"])
            errors += word_errors(ref, hyp)
            words += len(ref)
        return {**result, "wer": errors / max(1, words), "words": words}

    def gate_misses(self, result: dict[str, float], tolerance: Any) -> list[str]:
        """The encoder-decoder's bounds (mean KL, top-1), and the word error rate against fp32's transcripts."""
        out = super().gate_misses(result, tolerance)
        bound = MAX_WER.get(tolerance.precision, 0.0)
        if result["wer"] > bound:
            out.append(f"word error rate vs fp32 {result['wer']:.3f} > {bound} (by {result['wer'] - bound:.3f})")
        return out

    def tolerance_label(self, tolerance: dict) -> str:
        if tolerance.get("max_kld") is None:
            return super().tolerance_label(tolerance)
        return f"KL<={tolerance['max_kld']:g}, WER<={MAX_WER.get(tolerance['precision'], 0.0):g}"

    def gate_summary(self, result: dict[str, float]) -> str:
        return f"WER vs fp32 {result['wer']:.3f} ({result['words']} words), " + super().gate_summary(result)

    # --- timing ----------------------------------------------------------------------------------------

    def bench(self, session: Any, config: Any) -> dict:
        """Real-time factor on the golden speech: seconds of audio per second of compute, encoder and decoder apart."""
        golden = session.bundle.golden()
        clips = session.bundle.manifest["golden"].get("clips") or []
        seconds = [c["seconds"] for c in clips] or [30.0] * len(golden["encoder.input_features"])
        runs, inputs = _runs(session)
        speech = session.model["speech"]
        eos = set(session.bundle.manifest["tokenizer"].get("eos_token_ids") or [])
        encoder_s, decoder_s, tokens = 0.0, 0.0, 0
        for rep in range(config.warmup + config.repeats):
            for row, clip_seconds in enumerate(seconds):
                feeds = {"input_features": golden["encoder.input_features"][row : row + 1]}
                started = time.perf_counter()
                encoded = runs["encoder"](feeds)
                middle = time.perf_counter()
                out, _ = greedy({"encoder": lambda f, names=None: encoded, "decoder": runs["decoder"]}, inputs, feeds,
                                speech["prompt"], config.new_tokens, eos=eos, adjust=suppression(speech))
                ended = time.perf_counter()
                if rep >= config.warmup:
                    encoder_s += middle - started
                    decoder_s += ended - middle
                    tokens += len(out[0])
        audio = sum(seconds) * config.repeats
        return {"clips": len(seconds), "audio_seconds": sum(seconds), "encoder_ms": encoder_s * 1e3 / (len(seconds) * config.repeats),
                "decoder_ms": decoder_s * 1e3 / (len(seconds) * config.repeats),
                "decode_tokens_per_s": tokens / decoder_s if decoder_s else None,
                "real_time_factor": audio / (encoder_s + decoder_s), "encoder_share": encoder_s / (encoder_s + decoder_s)}

    def bench_rows(self, results: list[dict]) -> list[BenchTable]:
        rows = [(r["variant"], r["backend"], str(r["threads"]), f"{r['file_mb']:.1f}", f"{r['load_ms']:.0f}",
                 f"{r['encoder_ms']:.0f}", f"{r['decoder_ms']:.0f}", f"{r['decode_tokens_per_s']:.1f}",
                 f"{r['real_time_factor']:.1f}x", f"{r['encoder_share']:.0%}") for r in results]
        r0 = results[0]
        return [BenchTable(f"speech bench: {r0['clips']} clips, {r0['audio_seconds']:.1f} s of speech (real-time factor = "
                           "seconds of audio per second of compute)",
                           ("variant", "backend", "threads", "MB", "load ms", "encoder ms/window", "decoder ms/clip",
                            "decode tok/s", "real-time factor", "encoder share"), rows)]

    def report_latency(self, result: dict) -> tuple[float, dict]:
        return result["encoder_ms"] + result["decoder_ms"], {"real-time factor": result["real_time_factor"]}


def transcribe(session: Any, audio: str | os.PathLike | np.ndarray, sample_rate: int | None = None,
               language: str | None = None, task: str | None = None, max_new_tokens: int | None = None,
               batch_size: int = 4) -> dict:
    """Text of an audio file (WAV or FLAC) or a float array of samples (with `sample_rate`): {text, language, task,
    seconds, segments: [{start, end, text}] per 30 s window}."""
    from edgetx.runtimes.audio import log_mel_spectrogram, read_audio, resample, windows

    model = session.model
    settings, speech = model["audio"], model["speech"]
    if isinstance(audio, np.ndarray):
        if sample_rate is None:
            raise InputError("transcribe: give the sample rate of an array of samples (sample_rate=16000, ...)")
        if audio.ndim != 1 or audio.dtype.kind != "f" or not np.isfinite(audio).all():
            raise InputError(f"transcribe: samples must be a finite 1-D float array (mono), got {audio.dtype} "
                             f"of shape {list(audio.shape)}")
        samples, rate = audio.astype(np.float32), int(sample_rate)
    elif isinstance(audio, (str, os.PathLike)):
        samples, rate = read_audio(audio)
    else:
        raise InputError(f"transcribe takes an audio file path or a numpy array of samples, not {type(audio).__name__}")
    if rate != settings["sampling_rate"]:
        samples = resample(samples, rate, settings["sampling_rate"])
    prompt, language, task = _prompt(speech, language, task)
    mel = np.load(session.bundle.file(settings["mel_filters"]))
    parts = windows(samples, settings["n_samples"] / settings["sampling_rate"], settings["sampling_rate"])
    eos = set(session.bundle.manifest["tokenizer"].get("eos_token_ids") or [])
    limit = min(max_new_tokens or 10**9, model["max_target_positions"] - len(prompt))
    runs, inputs = _runs(session)
    texts = []
    for first in range(0, len(parts), batch_size):
        features = np.stack([log_mel_spectrogram(p, mel, settings["n_fft"], settings["hop_length"], settings["n_samples"])
                             for p in parts[first : first + batch_size]]).astype(np.float32)
        tokens, _ = greedy(runs, inputs, {"input_features": features}, prompt, limit, eos=eos, adjust=suppression(speech))
        texts += [session.tokenizer.decode(_until_end(row, eos)).strip() for row in tokens]
    window = settings["n_samples"] / settings["sampling_rate"]
    total = len(samples) / settings["sampling_rate"]
    segments = [{"start": round(i * window, 2), "end": round(min((i + 1) * window, total), 2), "text": text}
                for i, text in enumerate(texts)]
    return {"text": " ".join(t for t in texts if t), "language": language, "task": task, "seconds": round(total, 2),
            "segments": segments}


def _prompt(speech: dict, language: str | None, task: str | None) -> tuple[list[int], str | None, str | None]:
    """The decoder prompt for a language and task (defaults: the model's own forced ones)."""
    prompt = list(speech["prompt"])
    languages, tasks = speech.get("languages") or {}, speech.get("tasks") or {}
    by_id = {i: code for code, i in languages.items()}
    task_by_id = {i: name for name, i in tasks.items()}
    default_language = next((by_id[t] for t in prompt if t in by_id), None)
    default_task = next((task_by_id[t] for t in prompt if t in task_by_id), None)
    for given, table, default, what in ((language, languages, default_language, "language"),
                                        (task, tasks, default_task, "task")):
        if given is None or given == default:
            continue
        if given not in table:
            known = ", ".join(sorted(table)[:12]) + (" ..." if len(table) > 12 else "")
            raise InputError(f"transcribe: unknown {what} {given!r}; this model knows {known or 'none'}")
        if default is None:
            raise InputError(f"transcribe: this model's prompt has no {what} token to set")
        prompt[prompt.index(table[default])] = table[given]
    return prompt, language or default_language, task or default_task
