"""Peer worker: onnxruntime-genai (SmolLM2 only). Builds the model with genai's model builder from
the saved Hugging Face folder (cached), then times greedy generation with genai's own Generator. Variants named
"edgetx:<variant>" are the edgetx bundle's own variants converted for genai (`edgetx convert --to genai`): edgetx's
model in genai's runtime and loop.

Runs in its own virtualenv (.cache/peers/genai: transformers 5.x + onnx_ir for the builder).

    .cache/peers/genai/venv/bin/python benchmarks/peer_genai.py SPEC.json
"""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime_genai as og

from _common import bench_decoder, dir_mb, load_spec, log, run_variants

# name -> builder arguments. int4 uses the builder's defaults (symmetric, block 32, RTN);
# int4-asym asks for asymmetric blocks (uint4 + zero points), the scheme of the source GGUF (Q4_1).
# The builder ignores unknown --extra_options silently (e.g. int4_is_symmetric): spell them exactly.
VARIANTS: dict[str, list[str]] = {
    "fp32": ["-p", "fp32"],
    "int4": ["-p", "int4"],
    "int4-asym": ["-p", "int4", "--extra_options", "is_symmetric=false", "shared_embeddings=false"],
}


def build(hf_dir: Path, out: Path, args: list[str]) -> float:
    """Run the model builder once into `out` (atomically); returns seconds spent (0 if cached)."""
    stamp = out / ".builder-args"
    if (out / "genai_config.json").exists() and stamp.exists() and stamp.read_text() == " ".join(args):
        return 0.0
    shutil.rmtree(out, ignore_errors=True)
    tmp, cache = out.with_name(out.name + ".partial"), out.with_name(out.name + ".hfcache")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"genai model builder {' '.join(args)} -> {out} (once)")
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(tmp),
           "-e", "cpu", "-c", str(cache), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    (out.parent / f"{out.name}.build.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0 or not (tmp / "genai_config.json").exists():
        tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-1:]
        raise RuntimeError(f"model builder failed (exit {done.returncode}): {tail[0] if tail else 'no output'}"
                           f" (log: {out.name}.build.log)")
    shutil.rmtree(cache, ignore_errors=True)
    (tmp / ".builder-args").write_text(" ".join(args))
    tmp.rename(out)
    return time.perf_counter() - started


def load(model_dir: Path, threads: int) -> og.Model:
    """A genai Model on CPU with `threads` intra-op threads (set through the config overlay)."""
    config = og.Config(str(model_dir))
    config.clear_providers()
    overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads,
                                                         "inter_op_num_threads": 1}}}}
    config.overlay(json.dumps(overlay))
    return og.Model(config)


class GenaiDecoder:
    """genai's Generator, greedy (do_sample=False): tokens are chosen in genai's C++ loop."""

    def __init__(self, model: og.Model, max_length: int):
        self.model, self.max_length, self.generator = model, max_length, None
        self.teacher_method = ""

    def _params(self) -> og.GeneratorParams:
        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=self.max_length, batch_size=1)
        return params

    def first(self, prompt: np.ndarray) -> int:
        self.generator = og.Generator(self.model, self._params())
        self.generator.append_tokens(prompt.astype(np.int32)[None])
        self.generator.generate_next_token()
        return int(self.generator.get_next_tokens()[0])

    def next(self, token: int) -> int:
        self.generator.generate_next_token()  # genai already holds `token`; it runs it and picks the next
        return int(self.generator.get_next_tokens()[0])

    def teacher_logits(self, ids: np.ndarray) -> np.ndarray:
        """The full text in one append_tokens if genai exposes every position's logits (get_output),
        else one token at a time through the KV cache with get_logits() after each."""
        gen = og.Generator(self.model, self._params())
        gen.append_tokens(ids.astype(np.int32)[None])
        full = np.asarray(gen.get_output("logits"))
        if full.ndim == 3 and full.shape[1] == len(ids):
            self.teacher_method = "one append_tokens of the whole text, get_output('logits')"
            return full[0].astype(np.float32)
        gen = og.Generator(self.model, self._params())
        rows = []
        for token in ids:
            gen.append_tokens(np.array([[token]], dtype=np.int32))
            rows.append(np.asarray(gen.get_logits()).reshape(-1).astype(np.float32))
        self.teacher_method = "append_tokens one token at a time (KV cache), get_logits() after each"
        return np.stack(rows)


EDGETX_PREFIX = "edgetx:"  # "edgetx:int4-grid-a8": that edgetx variant's folder, converted by `edgetx convert --to genai`


def variant_job(spec: dict, data: dict, name: str, args: list[str]):
    def job() -> tuple[dict, dict]:
        if name.startswith(EDGETX_PREFIX):  # edgetx's model in genai's runtime: nothing to build
            manifest = json.loads((Path(spec["bundle"]) / "manifest.json").read_text())
            config = manifest["variants"][name[len(EDGETX_PREFIX):]]["formats"]["genai"]
            out, build_s = (Path(spec["bundle"]) / config).parent, 0.0
        else:
            out = Path(spec["cache"]) / f"smollm2-{name}"
            build_s = build(Path(spec["hf_dir"]), out, args)
        side = GenaiDecoder(load(out, spec["threads"]), max(len(data["prompt"]) + spec["new_tokens"], len(data["eval"])))
        timed = bench_decoder(side, data["prompt"], spec["new_tokens"], spec["warmup"], spec["repeats"])
        logits = side.teacher_logits(data["eval"])
        return ({"size_mb": dir_mb(out), "build_s": round(build_s, 1), "teacher_method": side.teacher_method,
                 "builder_args": " ".join(args), **timed}, {"logits": logits, "tokens": np.array(timed["tokens"])})
    return job


def main() -> None:
    spec = load_spec()
    data = dict(np.load(spec["inputs"]))
    versions = {p: md.version(p) for p in ("onnxruntime-genai", "onnxruntime", "transformers", "torch")}
    wanted = spec.get("variants") or list(VARIANTS)
    run_variants(spec, "genai", versions, [(n, variant_job(spec, data, n, VARIANTS.get(n, []))) for n in wanted])


if __name__ == "__main__":
    main()
