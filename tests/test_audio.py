"""The torch-free audio front end (edgetx.runtimes.audio): Whisper's features equal transformers', the resampler
is measured against pure tones, an ideal band-limited reference and scipy, and every unreadable file is refused
with one line that names it."""

from __future__ import annotations

import math
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank as transformers_mel_filter_bank

from conftest import run_python
from edgetx.errors import InputError
from edgetx.runtimes import audio
from speech import ESPEAK_RATE, speak

SENTENCE = "The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore."
# Measured max |features - transformers| (transformers 4.57.6, torch 2.13.0, numpy 2.4.6). Against transformers'
# numpy path, which computes in float64 like edgetx: 1.2e-07 on every signal below (one float32 step at 1.0).
# Against WhisperFeatureExtractor's default path, torch.stft in float32: 2.4e-05 on speech, 1.6e-05 on tones,
# 2.8e-05 at 75 s, 7.8e-07 on noise, 7.8e-05 on a loud 7.7 kHz tone over noise 50 dB down; the torch path
# differs from its own numpy path by the same amounts, so that is torch's float32 rounding, not edgetx.
TORCH_PATH_TOLERANCE = 1e-4
NUMPY_PATH_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor()


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """An English sentence spoken by espeak-ng, as read_audio gives it (22.05 kHz)."""
    samples, rate = audio.read_audio(speak(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav"))
    assert rate == ESPEAK_RATE and samples.size > 3 * rate
    return samples


def signals_16k(speech_16k: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 5) / 16000
    return {
        "speech": speech_16k,
        "white noise": (0.1 * rng.standard_normal(50_000)).astype(np.float32),
        "tones": (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3150 * t)).astype(np.float32),
        "tone under noise": (0.3 * np.sin(2 * np.pi * 7700 * t) + 1e-3 * rng.standard_normal(t.size)).astype(np.float32),
        "silence": np.zeros(16000, dtype=np.float32),
        "0.06 s (shorter than 30 s)": speech_16k[:1000],
        "75 s (longer than 30 s)": np.tile(speech_16k, 1 + 75 * 16000 // speech_16k.size)[:75 * 16000],
    }


def test_mel_filter_bank_equals_transformers():
    for sample_rate, n_fft, n_mels in ((16000, 400, 80), (16000, 400, 128), (22050, 1024, 64)):
        ours = audio.mel_filter_bank(sample_rate, n_fft, n_mels)
        theirs = transformers_mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels,
                                              min_frequency=0.0, max_frequency=sample_rate / 2,
                                              sampling_rate=sample_rate, norm="slaney", mel_scale="slaney")
        assert ours.shape == theirs.shape == (n_fft // 2 + 1, n_mels)
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)  # measured: identical for (16000, 400, 80)
    np.testing.assert_allclose(audio.mel_filter_bank(), WhisperFeatureExtractor().mel_filters, rtol=1e-12, atol=1e-15)


def test_features_equal_whisper_feature_extractor(extractor, speech):
    speech_16k = audio.resample(speech, ESPEAK_RATE)
    for name, samples in signals_16k(speech_16k).items():
        ours = audio.log_mel_spectrogram(samples, extractor.mel_filters)
        theirs = extractor(samples, sampling_rate=16000, return_tensors="np").input_features
        assert theirs.shape == (1, *ours.shape) and ours.shape == (80, 3000) and ours.dtype == np.float32, name
        assert np.abs(ours - theirs[0]).max() <= TORCH_PATH_TOLERANCE, name
        fixed = np.zeros((1, 480_000), dtype=np.float32)
        fixed[0, :min(samples.size, 480_000)] = samples[:480_000]
        numpy_path = extractor._np_extract_fbank_features(fixed, "cpu")[0]
        assert np.abs(ours - numpy_path).max() <= NUMPY_PATH_TOLERANCE, name
    assert audio.log_mel_spectrogram(speech_16k, extractor.mel_filters).std() > 0.1  # speech is not a constant


def ideal_resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """The band-limited reference: keep the spectrum below the lower Nyquist frequency, exactly (FFT, float64)."""
    common = math.gcd(from_rate, to_rate)
    up, down = to_rate // common, from_rate // common
    length = (-(-samples.size // down) + 64) * down  # room against wrap-around, a whole number of `down`s
    spectrum = np.fft.rfft(np.pad(samples.astype(np.float64), (0, length - samples.size)))
    out_length = length * up // down
    kept = np.zeros(out_length // 2 + 1, dtype=complex)
    shared = min(kept.size, spectrum.size)
    kept[:shared] = spectrum[:shared]
    return (np.fft.irfft(kept, out_length) * up / down)[: -(-samples.size * up // down)]


def test_resampled_speech_features_close_to_reference(extractor, speech):
    ours = audio.log_mel_spectrogram(audio.resample(speech, ESPEAK_RATE), extractor.mel_filters)
    reference = ideal_resample(speech, ESPEAK_RATE, 16000).astype(np.float32)
    theirs = extractor(reference, sampling_rate=16000, return_tensors="np").input_features[0]
    diff = np.abs(ours - theirs)
    top = np.nonzero(extractor.mel_filters.argmax(axis=0) * 40 > 7200)[0]  # bands peaking above 0.9 of Nyquist
    assert top.tolist() == [78, 79]
    # Measured max |diff| in bands 0-77 (peaks up to 7.12 kHz): 2.6e-4. Band 78 (7.16-7.68 kHz, over the
    # resampler's roll-off from 7.6 kHz): 7.0e-3. Band 79 (7.44-7.96 kHz): up to 0.47 in quiet frames, where the
    # reference's brick-wall filter rings at 8 kHz through the whole recording (against scipy's resample_poly it
    # is 0.13). Mean over all bands: 1.1e-4.
    assert diff[:78].max() <= 1e-3
    assert diff[78].max() <= 0.02
    assert diff.mean() <= 5e-4


@pytest.mark.parametrize("from_rate", [8000, 11025, 22050, 44100, 48000])
def test_resampler_reproduces_pure_tones(from_rate):
    t = np.arange(3 * from_rate) / from_rate
    for frequency in (100.0, 440.0, 1000.0, 3000.0, 0.9 * min(from_rate, 16000) / 2):
        out = audio.resample(np.sin(2 * np.pi * frequency * t), from_rate)
        assert out.dtype == np.float32 and out.size == -(-t.size * 16000 // from_rate)
        expected = np.sin(2 * np.pi * frequency * np.arange(out.size) / 16000)
        edge = 800  # the filter's reach at the ends, where the input stops
        # measured max error 1.1e-5 (8 kHz in, at 0.9 of Nyquist), 5.6e-6 at 22.05 kHz; 2e-7 at 1 kHz
        assert np.abs(out[edge:-edge] - expected[edge:-edge]).max() <= 5e-5, frequency
    constant = audio.resample(np.full(from_rate, 0.25), from_rate)
    np.testing.assert_allclose(constant[200:-200], 0.25, atol=1e-6)


@pytest.mark.parametrize("from_rate", [22050, 44100, 48000])
def test_resampler_removes_what_16k_cannot_hold(from_rate):
    t = np.arange(2 * from_rate) / from_rate

    def gain_db(frequency: float) -> float:
        out = audio.resample(np.cos(2 * np.pi * frequency * t + 0.3), from_rate)[1000:-1000].astype(np.float64)
        return 20 * np.log10(np.sqrt(2 * np.mean(out ** 2)))

    assert gain_db(7200) >= -0.001  # pass band (measured -0.0001 dB)
    assert gain_db(8000) <= -30  # measured -36.6 dB at 8 kHz, the new Nyquist frequency
    # measured -91.0 dB (48 kHz), -91.1 dB (22.05 and 44.1 kHz) for every tone from 8.1 kHz up
    assert max(gain_db(f) for f in np.linspace(8100, 0.99 * from_rate / 2, 16)) <= -88


@pytest.mark.parametrize("from_rate", [8000, 22050, 44100, 48000])
def test_resampler_equals_scipy_resample_poly_with_its_filter(from_rate):
    signal = pytest.importorskip("scipy.signal")
    common = math.gcd(from_rate, 16000)
    up, down = 16000 // common, from_rate // common
    rows = audio.polyphase_filter(up, down)
    reach = rows.shape[1] // 2
    prototype = np.zeros(2 * reach * up + 1)  # the same filter at the up-sampled rate, tap m at time m / up
    for phase in range(up):
        for column in range(rows.shape[1]):
            tap = phase - (column - reach) * up
            if abs(tap) <= reach * up:
                prototype[tap + reach * up] = rows[phase, column]
    noise = np.random.default_rng(1).standard_normal(2 * from_rate)
    theirs = signal.resample_poly(noise, up, down, window=prototype / up)  # scipy scales an explicit filter by up
    ours = audio.resample(noise, from_rate)
    assert ours.size == theirs.size
    assert np.abs(ours - theirs).max() <= 1e-6  # measured 1.8e-7 (float32 output)


def test_resample_arguments():
    samples = np.linspace(-1, 1, 100)
    np.testing.assert_array_equal(audio.resample(samples, 16000), samples.astype(np.float32))
    assert audio.resample(np.zeros(0), 44100).size == 0
    for bad in (0, -8000, 16000.5, True):
        with pytest.raises(InputError, match="from_rate must be a positive whole number"):
            audio.resample(samples, bad)
    with pytest.raises(InputError, match="one channel"):
        audio.resample(np.zeros((100, 2)), 44100)


def test_windows_split_long_audio():
    samples = np.arange(75 * 16000, dtype=np.float32)
    parts = audio.windows(samples)
    assert [p.size for p in parts] == [480_000, 480_000, 240_000]
    np.testing.assert_array_equal(np.concatenate(parts), samples)
    assert [p.size for p in audio.windows(samples[:960_000])] == [480_000, 480_000]
    assert [p.size for p in audio.windows(samples[:100], seconds=0.005)] == [80, 20]
    assert audio.windows(np.zeros(0)) == []
    with pytest.raises(InputError):
        audio.windows(samples, seconds=0)


# --- reading files ---------------------------------------------------------------------------------------------

def chunk(name: bytes, body: bytes) -> bytes:
    return struct.pack("<4sI", name, len(body)) + body + b"\0" * (len(body) & 1)


def write_wav(path, data: bytes, *, format_tag: int = 1, channels: int = 1, rate: int = 16000, width: int = 2,
              extensible: bool = False, data_size: int | None = None, before_data: bytes = b"",
              data_first: bool = False):
    """A RIFF/WAVE file written byte by byte (the stdlib `wave` writes PCM only)."""
    block = channels * width
    if extensible:  # WAVE_FORMAT_EXTENSIBLE: cbSize 22, valid bits, channel mask, sub-format GUID
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, (rate * block) % (1 << 32), block, 8 * width, 22, 8 * width, 0)
        fmt += struct.pack("<H", format_tag) + bytes.fromhex("000000001000800000aa00389b71")
    else:
        fmt = struct.pack("<HHIIHH", format_tag, channels, rate, (rate * block) % (1 << 32), block, 8 * width)
    data_chunk = struct.pack("<4sI", b"data", len(data) if data_size is None else data_size) + data
    body = [chunk(b"fmt ", fmt), before_data, data_chunk]
    body = b"WAVE" + b"".join(body[::-1] if data_first else body)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


SAMPLE_KINDS = {  # (format tag, bytes per sample): how to make random samples, and their values at full scale 1
    (1, 1): lambda rng, n: (rng.integers(0, 256, n).astype(np.uint8), lambda v: (v.astype(float) - 128) / 128),
    (1, 2): lambda rng, n: (rng.integers(-32768, 32768, n).astype("<i2"), lambda v: v / 32768),
    (1, 3): lambda rng, n: (rng.integers(-1 << 23, 1 << 23, n).astype("<i4"), lambda v: v / float(1 << 23)),
    (1, 4): lambda rng, n: (rng.integers(-1 << 31, 1 << 31, n).astype("<i4"), lambda v: v / float(1 << 31)),
    (3, 4): lambda rng, n: (rng.uniform(-1, 1, n).astype("<f4"), lambda v: v.astype(float)),
    (3, 8): lambda rng, n: (rng.uniform(-1, 1, n).astype("<f8"), lambda v: v),
}


def encoded(values: np.ndarray, width: int) -> bytes:
    if width == 3:
        return values.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return values.tobytes()


@pytest.mark.parametrize("extensible", [False, True], ids=["plain", "extensible"])
@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("kind", list(SAMPLE_KINDS), ids=lambda k: f"{'pcm' if k[0] == 1 else 'float'}{8 * k[1]}")
def test_wav_samples_are_read_and_averaged_to_mono(tmp_path, kind, channels, extensible):
    format_tag, width = kind
    values, to_float = SAMPLE_KINDS[kind](np.random.default_rng(channels), 1001 * channels)
    odd_chunk = chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00edgex")  # an odd-sized chunk: the pad byte is skipped
    path = write_wav(tmp_path / "x.wav", encoded(values, width), format_tag=format_tag, channels=channels,
                     rate=44100, width=width, extensible=extensible, before_data=odd_chunk,
                     data_first=channels == 6)  # RIFF allows the chunks in any order
    samples, rate = audio.read_audio(path)
    assert rate == 44100 and samples.dtype == np.float32 and samples.shape == (1001,)
    expected = to_float(values).reshape(1001, channels).mean(axis=1)
    np.testing.assert_allclose(samples, expected, rtol=0, atol=1e-6)
    soundfile = optional_soundfile(required=False)
    if soundfile is not None and channels != 6:  # libsndfile reads the same values (it wants 'fmt ' before 'data')
        np.testing.assert_allclose(samples, soundfile.read(path, always_2d=True)[0].mean(axis=1), rtol=0, atol=1e-6)


def test_wav_edge_cases(tmp_path):
    loud = write_wav(tmp_path / "loud.wav", np.array([1.5, -2.0, 0.25], "<f4").tobytes(), format_tag=3, width=4)
    np.testing.assert_array_equal(audio.read_audio(loud)[0], [1.0, -1.0, 0.25])  # float beyond full scale: clipped
    values = np.array([1, -2, 3, 32767], "<i2")
    streamed = write_wav(tmp_path / "streamed.wav", values.tobytes(), data_size=0xFFFFFFFF)  # size left unknown
    np.testing.assert_array_equal(audio.read_audio(streamed)[0], values / 32768)
    odd = write_wav(tmp_path / "odd.wav", values.tobytes() + b"\x07", data_size=9)  # a stray byte after the frames
    np.testing.assert_array_equal(audio.read_audio(odd)[0], values / 32768)


def optional_soundfile(required: bool = True):
    """The soundfile package (the `audio` extra); when `required`, its absence skips the test (fails in CI)."""
    try:
        import soundfile
    except (ImportError, OSError) as e:
        if not required:
            return None
        message = f"soundfile is not installed ({e}); `pip install 'edgetx[audio]'` (make venv installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return soundfile


def test_flac_is_read(tmp_path, speech):
    soundfile = optional_soundfile()
    stereo = np.stack([speech, 0.5 * speech[::-1]], axis=1)
    soundfile.write(tmp_path / "speech.flac", stereo, ESPEAK_RATE, subtype="PCM_16")
    samples, rate = audio.read_audio(tmp_path / "speech.flac")
    assert rate == ESPEAK_RATE and samples.shape == speech.shape and samples.dtype == np.float32
    np.testing.assert_allclose(samples, stereo.mean(axis=1), atol=1 / 32768)  # lossless up to 16-bit rounding


def one_second(rate: int = 16000) -> bytes:
    return (np.sin(np.arange(rate) / 5) * 8000).astype("<i2").tobytes()


REFUSALS = {  # file name: (what to write, what the message must say)
    "song.mp3": (lambda p: p.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + os.urandom(512)), "MP3 audio"),
    "frames.mp3": (lambda p: p.write_bytes(b"\xff\xfb\x90\x64" + bytes(512)), "MP3 audio"),
    "voice.ogg": (lambda p: p.write_bytes(b"OggS\x00\x02" + bytes(64) + b"\x01vorbis"), "Ogg audio"),
    "clip.m4a": (lambda p: p.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(64)), "MP4/M4A"),
    "notes.wav": (lambda p: p.write_text("not audio: a text file named .wav\n"), "a text file"),
    "empty.wav": (lambda p: p.write_bytes(b""), "an empty file"),
    "cut.wav": (lambda p: p.write_bytes(write_wav(p, one_second()).read_bytes()[:20_000]), "cut short"),
    "header-cut.wav": (lambda p: p.write_bytes(write_wav(p, one_second()).read_bytes()[:30]), "cut short"),
    "riff-cut.wav": (lambda p: p.write_bytes(b"RIFF\x10\x00"), "cut short"),
    "no-data.wav": (lambda p: p.write_bytes(write_wav(p, b"").read_bytes()[:36]), "no 'data' chunk"),
    "zero-channels.wav": (lambda p: write_wav(p, one_second(), channels=0), "0 channels"),
    "absurd-rate.wav": (lambda p: write_wav(p, one_second(), rate=4_000_000_000), "sample rate of 4000000000 Hz"),
    "zero-rate.wav": (lambda p: write_wav(p, one_second(), rate=0), "sample rate of 0 Hz"),
    "adpcm.wav": (lambda p: write_wav(p, one_second(), format_tag=2), "WAV of format 0x0002"),
    "pcm40.wav": (lambda p: write_wav(p, bytes(500), width=5), "WAV of PCM, 40 bits"),
    "float16.wav": (lambda p: write_wav(p, bytes(500), format_tag=3, width=2), "WAV of IEEE float, 16 bits"),
    "nan.wav": (lambda p: write_wav(p, np.array([0, np.nan], "<f4").tobytes(), format_tag=3, width=4), "NaN"),
    "silent.wav": (lambda p: write_wav(p, b""), "no samples"),
    "missing.wav": (lambda p: None, "no such audio file"),
    "broken.flac": (lambda p: p.write_bytes(b"fLaC" + os.urandom(200)), "FLAC"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_unreadable_files_are_refused_in_one_line(tmp_path, name):
    make, says = REFUSALS[name]
    make(tmp_path / name)
    with pytest.raises(InputError) as refused:
        audio.read_audio(tmp_path / name)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / name}: ") and says in message, message
    if name != "broken.flac" or optional_soundfile(required=False) is not None:
        assert "edgetx reads WAV (PCM 8/16/24/32-bit or 32/64-bit float) and FLAC" in message, message
    converts = name in ("song.mp3", "frames.mp3", "voice.ogg", "clip.m4a")  # other media: how to convert it
    assert (f"ffmpeg -i {tmp_path / name} -ar 16000 " in message) == converts, message


@settings(deadline=None, database=None, derandomize=True, max_examples=400,
          suppress_health_check=list(HealthCheck))
@given(edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(0, 120))
def test_damaged_wav_headers_give_samples_or_an_input_error(tmp_path_factory, edits, cut):
    good = write_wav(tmp_path_factory.mktemp("fuzz") / "x.wav", one_second()[:64], before_data=chunk(b"LIST", b"ab"))
    damaged = bytearray(good.read_bytes())
    for at, value in edits:  # bytes changed in the headers (the first 80 bytes), then maybe cut short
        damaged[at] = value
    good.write_bytes(bytes(damaged[:len(damaged) - cut]))
    try:
        samples, rate = audio.read_audio(good)
    except InputError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{good}: ")
    else:
        assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size and np.abs(samples).max() <= 1.0
        assert audio.MIN_SAMPLE_RATE <= rate <= audio.MAX_SAMPLE_RATE


def test_flac_without_soundfile_names_the_extra(tmp_path):
    path = tmp_path / "speech.flac"
    path.write_bytes(b"fLaC" + bytes(100))
    result = run_python(f"""import sys
sys.modules["soundfile"] = None
from edgetx.errors import InputError
from edgetx.runtimes.audio import read_audio
try:
    read_audio({str(path)!r})
except InputError as e:
    print(e)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: reading FLAC needs the soundfile package")
    assert "pip install 'edgetx[audio]'" in result.stdout and result.stdout.count("\n") == 1


def test_audio_runs_with_torch_and_transformers_blocked(tmp_path):
    path = write_wav(tmp_path / "tone.wav", one_second(22050), channels=1, rate=22050)
    result = run_python(f"""import sys
sys.modules["torch"] = None
sys.modules["transformers"] = None
from edgetx.runtimes import log_mel_spectrogram, mel_filter_bank, read_audio, resample
from edgetx.runtimes.audio import windows
samples, rate = read_audio({str(path)!r})
features = log_mel_spectrogram(resample(samples, rate), mel_filter_bank(16000, 400, 80))
assert features.shape == (80, 3000) and len(windows(samples)) == 1
loaded = [m for m in sys.modules if sys.modules[m] is not None and m.split(".")[0] in ("torch", "transformers")]
assert not loaded, loaded
print("ok")
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
