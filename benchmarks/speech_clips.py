"""Writes exporters/speech/: the real speech edgetx keeps for speech models' golden I/O and quantization gates.

Debian's espeak-ng speaks each sentence of SENTENCES (22.05 kHz), edgetx's own resampler takes it to 16 kHz, and it
is stored as 16-bit mono WAV with the sentence in clips.json. The first GOLDEN clips are the golden inputs; the rest
are held out for the gates (word error rate of a quantized variant against fp32). Run once; the files are committed.

    python benchmarks/speech_clips.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "exporters" / "speech"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you arrive at the station.",
    "The weather today is cold and rainy in the north.",
    "Seven hundred people waited outside the old theatre.",
    "She bought three apples and a loaf of bread.",
    "Turn left at the next corner and walk two blocks.",
    "The meeting has been moved to Thursday afternoon.",
    "Our train leaves at half past nine in the morning.",
    "He wrote a long letter to his sister in Canada.",
    "Water boils at one hundred degrees at sea level.",
    "The children played in the garden until dark.",
    "Can you tell me where the nearest library is?",
]
GOLDEN = 3


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from edgetx.runtimes.audio import read_audio, resample

    OUT.mkdir(parents=True, exist_ok=True)
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, sentence in enumerate(SENTENCES):
            spoken = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-w", str(spoken), sentence], check=True, capture_output=True)
            samples, rate = read_audio(spoken)
            pcm = np.clip(np.round(resample(samples, rate, 16000) * 32767), -32768, 32767).astype("<i2")
            name = f"clip{i:02d}.wav"
            with wave.open(str(OUT / name), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(16000)
                out.writeframes(pcm.tobytes())
            clips.append({"file": name, "text": sentence, "seconds": round(len(pcm) / 16000, 2),
                          "use": "golden" if i < GOLDEN else "held-out"})
    (OUT / "clips.json").write_text(json.dumps({"source": "espeak-ng (Debian), resampled to 16 kHz by edgetx",
                                                "clips": clips}, indent=1) + "\n")
    print(f"{len(clips)} clips in {OUT}, {sum(c['seconds'] for c in clips):.1f} s")


if __name__ == "__main__":
    main()
