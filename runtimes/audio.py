"""The audio front end of speech models, torch-free: read WAV and FLAC, resample to 16 kHz, and compute
Whisper's log-mel features exactly as transformers' `WhisperFeatureExtractor` does.

Needs numpy and the standard library only; FLAC needs the optional `soundfile` package
(`pip install 'edgetx[audio]'`). A file that cannot be read is an InputError naming the file, what it
holds and what is accepted.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgetx.errors import InputError

WHISPER_SAMPLE_RATE = 16000
# Sample rates outside this range are a damaged header, not audio (telephony is 8 kHz, studio tops out at 768 kHz).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000
ACCEPTED = "edgetx reads WAV (PCM 8/16/24/32-bit or 32/64-bit float) and FLAC"

_WAVE_FORMAT_PCM, _WAVE_FORMAT_FLOAT, _WAVE_FORMAT_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
# What other files start with, to say what a refused file is (the first match wins).
_SIGNATURES = (
    (b"ID3", "MP3 audio"), (b"OggS", "Ogg audio (Vorbis, Opus or FLAC in Ogg)"), (b"FORM", "AIFF audio"),
    (b"RIFX", "big-endian WAV (RIFX)"), (b"RF64", "RF64 WAV"), (b"BW64", "BW64 WAV"), (b"caff", "Core Audio (CAF)"),
    (b"\x1aE\xdf\xa3", "WebM/Matroska media"), (b"#!AMR", "AMR audio"), (b".snd", "Sun/NeXT AU audio"),
    (b"MThd", "MIDI"), (b"PK\x03\x04", "a ZIP archive"), (b"%PDF", "a PDF document"),
)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Samples (float32, mono, in [-1, 1]) and sample rate of a WAV or FLAC file; channels are averaged."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file; {ACCEPTED}")
    try:
        with open(path, "rb") as file:
            head = file.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            samples, rate = _read_wav(path)
        elif head[:4] == b"fLaC":
            samples, rate = _read_flac(path)
        else:
            raise _refusal(path, *_describe(path, head))
    except OSError as e:  # permissions, a device error: the file itself cannot be read
        raise InputError(f"{path}: the file cannot be read ({e.strerror or e}); {ACCEPTED}") from None
    _check_rate(path, rate)
    if samples.size == 0:
        raise InputError(f"{path}: the audio holds no samples; give a recording with sound in it — {ACCEPTED}")
    return samples, rate


def _refusal(path: Path, found: str, is_media: bool) -> InputError:
    """The one-line refusal of a file edgetx does not read; for other media, the conversion that makes it readable."""
    convert = f" — convert it, e.g. `ffmpeg -i {path} -ar 16000 {path.with_name(path.stem + '-16k.wav')}`"
    return InputError(f"{path}: {found} cannot be read here; {ACCEPTED}{convert if is_media else ''}")


def _describe(path: Path, head: bytes) -> tuple[str, bool]:
    """What a file that is neither WAV nor FLAC appears to be, from its first bytes, and whether it is media."""
    if not head:
        return "an empty file", False
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name, not name.startswith("a ")
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "AAC audio (ADTS)", True
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "MP3 audio", True
    if head[4:8] == b"ftyp":
        return "MP4/M4A media", True
    if head[:4] == b"RIFF" and len(head) < 12:
        return "a WAV file cut short inside its 12-byte header", False
    if head[:4] == b"RIFF":
        return f"a RIFF file of type {head[8:12].decode('latin-1')!r} (not WAVE)", True
    with open(path, "rb") as file:
        start = file.read(4096)
    try:
        start.decode("utf-8")
        return "a text file", False
    except UnicodeDecodeError as e:
        if e.start >= len(start) - 3 and e.reason == "unexpected end of data":  # a character cut at 4096 bytes
            return "a text file", False
    return f"an unrecognised file (it starts with bytes {head[:4].hex(' ')})", False


def _check_rate(path: Path, rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise InputError(f"{path}: the header gives a sample rate of {rate} Hz, outside {MIN_SAMPLE_RATE}-"
                         f"{MAX_SAMPLE_RATE} Hz, so the file is damaged; {ACCEPTED} at a real sample rate")


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Parse a RIFF/WAVE file: the `fmt ` chunk (PCM, IEEE float or WAVE_FORMAT_EXTENSIBLE) and the `data` chunk."""
    size = path.stat().st_size
    fmt, data_at, data_size = None, None, None
    with open(path, "rb") as file:
        position = 12
        while position + 8 <= size and (fmt is None or data_at is None):
            file.seek(position)
            chunk_id, chunk_size = struct.unpack("<4sI", file.read(8))
            if chunk_id == b"fmt ":
                fmt = file.read(min(chunk_size, 40))
            elif chunk_id == b"data":
                data_at, data_size = position + 8, chunk_size
            position += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size
    if fmt is None or len(fmt) < 16:
        raise InputError(f"{path}: the WAV file has no complete 'fmt ' chunk, so it is damaged or cut short; "
                         f"{ACCEPTED}")
    if data_at is None:
        raise InputError(f"{path}: the WAV file has no 'data' chunk, so it is damaged or cut short; {ACCEPTED}")
    format_tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if format_tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        format_tag = struct.unpack("<H", fmt[24:26])[0]  # the first two bytes of the sub-format GUID
    if channels == 0:
        raise InputError(f"{path}: the WAV header gives 0 channels, so the file is damaged; {ACCEPTED}")
    _check_rate(path, rate)
    width = block_align // channels
    kinds = {_WAVE_FORMAT_PCM: ("PCM", {1, 2, 3, 4}), _WAVE_FORMAT_FLOAT: ("IEEE float", {4, 8})}
    if format_tag not in kinds or width not in kinds[format_tag][1] or block_align != width * channels:
        found = kinds.get(format_tag, (f"format 0x{format_tag:04x}",))[0]
        raise InputError(f"{path}: WAV of {found}, {bits} bits in {block_align}-byte frames of {channels} channel(s), "
                         f"cannot be read here; {ACCEPTED} — convert it, e.g. `ffmpeg -i {path} -c:a pcm_s16le "
                         f"{path.with_name(path.stem + '-pcm.wav')}`")
    present = size - data_at
    if data_size == 0xFFFFFFFF:  # the size a streaming writer (ffmpeg to a pipe) leaves: the data runs to the end
        data_size = present
    if data_size > present:
        raise InputError(f"{path}: the WAV data chunk declares {data_size} bytes but only {present} are in the file "
                         f"(it is cut short); copy or export the recording again — {ACCEPTED}")
    frames = data_size // block_align
    with open(path, "rb") as file:
        file.seek(data_at)
        raw = np.frombuffer(file.read(frames * block_align), dtype=np.uint8)
    samples = _decode_samples(raw, width, format_tag == _WAVE_FORMAT_FLOAT).reshape(frames, channels)
    if not np.isfinite(samples).all():
        raise InputError(f"{path}: the float WAV holds NaN or infinite samples; export the recording again — "
                         f"{ACCEPTED}")
    return _to_mono(samples), rate


def _decode_samples(raw: np.ndarray, width: int, is_float: bool) -> np.ndarray:
    """Little-endian samples of `width` bytes as float32 at full scale 1.0 (8-bit PCM is unsigned)."""
    if is_float:
        return raw.view("<f4" if width == 4 else "<f8").astype(np.float32)
    if width == 1:
        return (raw.astype(np.float32) - 128.0) / 128.0
    if width == 3:
        triples = raw.reshape(-1, 3).astype(np.int32)
        values = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
        return values.astype(np.float32) / float(1 << 23)
    return raw.view("<i2" if width == 2 else "<i4").astype(np.float32) / float(1 << (8 * width - 1))


def _to_mono(samples: np.ndarray) -> np.ndarray:
    """The channel average of (frames, channels) samples, clipped to [-1, 1] (float files may exceed it)."""
    mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float64)
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def _read_flac(path: Path) -> tuple[np.ndarray, int]:
    """Decode FLAC with libsndfile through the optional `soundfile` package."""
    try:
        import soundfile
    except (ImportError, OSError) as e:  # OSError: the package is there but its libsndfile is not
        raise InputError(f"{path}: reading FLAC needs the soundfile package ({e}): pip install 'edgetx[audio]', "
                         f"or convert it to WAV, e.g. `ffmpeg -i {path} -ar 16000 "
                         f"{path.with_name(path.stem + '-16k.wav')}`") from None
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile reports any damage as its own error type
        reason = (getattr(e, "error_string", None) or str(e) or type(e).__name__).strip().splitlines()[-1]
        raise InputError(f"{path}: the FLAC stream cannot be decoded ({reason}), so it is damaged or cut short; "
                         f"copy or export the recording again — {ACCEPTED}") from None
    if samples.shape[1] == 0:
        raise InputError(f"{path}: the FLAC header gives 0 channels, so the file is damaged; {ACCEPTED}")
    return _to_mono(samples), int(rate)


# The resampler's low-pass filter, a Kaiser-windowed sinc (see `resample`). Measured response, relative to the lower
# Nyquist frequency (8 kHz for Whisper): flat within 0.0001 dB to 0.9 of it, -0.1 dB at 0.95, -6 dB at 0.975,
# -37 dB at 1.0 and -91 dB or less from 1.01 on, so aliases land only in the top 1% of the band (7.92-8 kHz), 37 dB
# down or more. Whisper's features reach 8 kHz: a cut-off at 0.95 changed a word of an espeak-ng test sentence.
ZERO_CROSSINGS = 80
KAISER_BETA = 9.0
ROLLOFF = 0.975


def resample(samples: np.ndarray, from_rate: int, to_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """`samples` at `to_rate`: band-limited interpolation with an anti-aliasing low-pass (Kaiser-windowed sinc).

    Output sample n sits at input time t = n * from_rate / to_rate and is the sum of the input around t weighted by
    h(t - k) = 2 fc sinc(2 fc (t - k)) kaiser((t - k) / half_width), with the cut-off fc at ROLLOFF of the lower
    Nyquist frequency. The rate ratio is reduced to up / down, so t takes `up` fractional positions: the weights are
    `up` rows of weights (a polyphase filter, `polyphase_filter`), each row scaled to sum to 1 (a constant stays constant). Outside the
    signal the input is zero, as in scipy's `resample_poly`; the output has ceil(len * to_rate / from_rate) samples.
    """
    for name, rate in (("from_rate", from_rate), ("to_rate", to_rate)):
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise InputError(f"resample: {name} must be a positive whole number of Hz, got {rate!r}")
    signal = np.asarray(samples, dtype=np.float64)
    if signal.ndim != 1:
        raise InputError(f"resample: samples must be one channel (1-D), got shape {signal.shape}; average channels")
    if from_rate == to_rate:
        return signal.astype(np.float32)
    common = math.gcd(int(from_rate), int(to_rate))
    up, down = int(to_rate) // common, int(from_rate) // common
    reach = _filter_reach(up, down)
    n_out = -(-signal.size * up // down)
    padded = np.pad(signal, (reach, reach + 1))
    spans = sliding_window_view(padded, 2 * reach + 1)  # spans[k] = the input around input sample k
    out = np.empty(n_out, dtype=np.float64)
    for first in range(min(up, n_out)):  # outputs first, first + up, ... share one fractional position
        position = first * down
        count = len(range(first, n_out, up))
        out[first::up] = spans[position // up::down][:count] @ polyphase_filter(up, down, [position % up])[0]
    return out.astype(np.float32)


def _filter_reach(up: int, down: int) -> int:
    """How many input samples the filter reaches on each side of an output (the half width, rounded up)."""
    return math.ceil(ZERO_CROSSINGS / min(1.0, up / down) / ROLLOFF)


def polyphase_filter(up: int, down: int, phases: list[int] | None = None) -> np.ndarray:
    """The resampler's weights for resampling by up / down: row p for output at input time k0 + p / up, column i
    weighing input k0 + i - reach; every row (default: all `up` of them) sums to 1."""
    cutoff = 0.5 * min(1.0, up / down) * ROLLOFF  # cycles per input sample
    half_width = ZERO_CROSSINGS / (2.0 * cutoff)  # input samples
    reach = _filter_reach(up, down)
    fractions = np.arange(up) / up if phases is None else np.asarray(phases, dtype=np.float64) / up
    offsets = fractions[:, None] - np.arange(-reach, reach + 1)[None, :]  # t - k
    inside = np.clip(1.0 - (offsets / half_width) ** 2, 0.0, None)
    weights = 2 * cutoff * np.sinc(2 * cutoff * offsets) * np.i0(KAISER_BETA * np.sqrt(inside)) / np.i0(KAISER_BETA)
    weights[np.abs(offsets) > half_width] = 0.0
    return weights / weights.sum(axis=1, keepdims=True)


def mel_filter_bank(sample_rate: int = WHISPER_SAMPLE_RATE, n_fft: int = 400, n_mels: int = 80,
                    f_min: float = 0.0, f_max: float | None = None) -> np.ndarray:
    """Slaney-style triangular mel filters (Slaney mel scale, area-normalised), shape (n_fft // 2 + 1, n_mels).

    What Whisper's features use (librosa's default, transformers' `mel_filter_bank(norm="slaney",
    mel_scale="slaney")`); f_max defaults to the Nyquist frequency.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    mel_edges = np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    hz_edges = _mel_to_hz(mel_edges)
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    distance = hz_edges[None, :] - fft_freqs[:, None]
    spacing = np.diff(hz_edges)
    rising = -distance[:, :-2] / spacing[:-1]
    falling = distance[:, 2:] / spacing[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (hz_edges[2:] - hz_edges[:-2]))[None, :]


def _hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_step = 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * log_step, 3.0 * hz / 200.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), 200.0 * mel / 3.0)


def log_mel_spectrogram(samples16k: np.ndarray, mel_filters: np.ndarray, n_fft: int = 400, hop_length: int = 160,
                        n_samples: int = 480_000) -> np.ndarray:
    """Whisper's input features, (n_mels, n_samples // hop_length) float32: what `WhisperFeatureExtractor` gives.

    The audio is cut or zero-padded to n_samples (30 s), framed around each hop (reflect padding at the ends),
    weighted by a periodic Hann window; the power spectrum is projected on the mel filters, the last frame dropped,
    and the log10 (floored at 1e-10) limited to 8 below its maximum and mapped by (x + 4) / 4.
    """
    audio = np.asarray(samples16k, dtype=np.float32)  # transformers rounds to float32 first
    if audio.ndim != 1:
        raise InputError(f"log_mel_spectrogram: samples must be one channel (1-D), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise InputError("log_mel_spectrogram: the samples hold NaN or infinite values")
    bins = n_fft // 2 + 1
    if mel_filters.ndim != 2 or mel_filters.shape[0] != bins:
        raise InputError(f"log_mel_spectrogram: mel_filters must be ({bins}, n_mels) for n_fft={n_fft}, "
                         f"got shape {mel_filters.shape}")
    fixed = np.zeros(n_samples, dtype=np.float64)
    fixed[:min(audio.size, n_samples)] = audio[:n_samples]
    padded = np.pad(fixed, n_fft // 2, mode="reflect")
    frames = sliding_window_view(padded, n_fft)[::hop_length][:-1]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    spectrum = np.fft.rfft(frames * window, axis=1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    log_mel = np.log10(np.maximum(power @ mel_filters.astype(np.float64), 1e-10)).T
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


def windows(samples16k: np.ndarray, seconds: float = 30, sample_rate: int = WHISPER_SAMPLE_RATE) -> list[np.ndarray]:
    """Long audio as consecutive windows of `seconds` (the last one shorter), for long-form transcription."""
    audio = np.asarray(samples16k)
    if audio.ndim != 1:
        raise InputError(f"windows: samples must be one channel (1-D), got shape {audio.shape}")
    size = int(round(seconds * sample_rate))
    if size <= 0:
        raise InputError(f"windows: a window must hold at least one sample, got {seconds} s at {sample_rate} Hz")
    return [audio[start:start + size] for start in range(0, audio.size, size)]
