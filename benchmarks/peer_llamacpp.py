"""Peer worker: llama.cpp through llama-cpp-python (SmolLM2 only). Runs the same Q4_1 GGUF file the
edgetx bundle is built from, natively, and llama.cpp's own re-quantizations of that file (Q8_0, F16,
F32: `llama_model_quantize` with allow_requantize, cached), fed the harness's token ids directly.

Runs in its own virtualenv (.cache/peers/llamacpp: llama-cpp-python compiled from source).

    .cache/peers/llamacpp/venv/bin/python benchmarks/peer_llamacpp.py SPEC.json
"""

from __future__ import annotations

import ctypes
import importlib.metadata as md
import json
import time
from pathlib import Path

import llama_cpp
import numpy as np

from _common import bench_decoder, dir_mb, load_spec, log, run_variants

# name -> llama_ftype to re-quantize the source file to; None = the source file itself (Q4_1).
VARIANTS: dict[str, int | None] = {
    "Q4_1": None,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "F32": llama_cpp.LLAMA_FTYPE_ALL_F32,
}


def requantize(source: Path, out: Path, ftype: int, threads: int) -> float:
    """The source GGUF re-quantized by llama.cpp into `out` (atomically); seconds spent (0 if cached).
    From Q4_1 every tensor is de-quantized first, so F32 holds exactly the GGUF's values."""
    if out.exists():
        return 0.0
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.nthread = ftype, True, threads
    log(f"llama_model_quantize {source.name} -> {out.name} (once)")
    started = time.perf_counter()
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
    if code != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize to ftype {ftype} returned {code}")
    partial.rename(out)
    return time.perf_counter() - started


def load(path: Path, threads: int, n_ctx: int, logits_all: bool) -> llama_cpp.Llama:
    """llama-cpp-python's defaults otherwise (n_batch 512, flash attention off, KV cache f16, mmap)."""
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                           logits_all=logits_all, verbose=False)


class LlamaCppDecoder:
    """Tokens go in as ids through `Llama.eval` (llama.cpp's tokenizer is not used); the next token is
    chosen by llama.cpp's greedy sampler over the last position's logits, in C."""

    def __init__(self, path: Path, threads: int, n_ctx: int):
        self.path, self.threads, self.n_ctx = path, threads, n_ctx
        self.llm = load(path, threads, n_ctx, logits_all=False)
        self.greedy = llama_cpp.llama_sampler_init_greedy()
        self.teacher_method = ""

    def first(self, prompt: np.ndarray) -> int:
        self.llm.reset()  # eval() then drops the whole KV cache from position 0
        self.llm.eval([int(t) for t in prompt])
        return int(llama_cpp.llama_sampler_sample(self.greedy, self.llm.ctx, -1))

    def next(self, token: int) -> int:
        self.llm.eval([token])
        return int(llama_cpp.llama_sampler_sample(self.greedy, self.llm.ctx, -1))

    def teacher_logits(self, ids: np.ndarray) -> np.ndarray:
        """Every position's logits of one `eval` of the whole text, from a context with logits_all=True."""
        llm = load(self.path, self.threads, self.n_ctx, logits_all=True)
        try:
            llm.eval([int(t) for t in ids])
            self.teacher_method = "one eval() of the whole text with logits_all=True, Llama.scores"
            return np.array(llm.scores[: len(ids)], dtype=np.float32)
        finally:
            llm.close()

    def close(self) -> None:
        llama_cpp.llama_sampler_free(self.greedy)
        self.llm.close()


def vocabulary_note(llm: llama_cpp.Llama, spec: dict, prompt: np.ndarray) -> str:
    """Check that llama.cpp's token ids are the harness's: its logits width against the Hugging Face
    vocabulary size (when the HF folder exists), and llama.cpp's own tokenization of the prompt text."""
    n_vocab = llm.n_vocab()
    config = Path(spec["hf_dir"]) / "config.json"
    if config.exists():
        hf_vocab = json.loads(config.read_text())["vocab_size"]
        if hf_vocab != n_vocab:
            raise RuntimeError(f"llama.cpp's vocabulary has {n_vocab} ids, the Hugging Face config {hf_vocab}")
        width = f"logits width {n_vocab} = HF vocab_size"
    else:
        width = f"logits width {n_vocab} (no HF folder to compare with)"
    from texts import PROMPT_TEXT
    ids = [int(t) for t in prompt]
    bos = [llm.token_bos()] if ids[0] == llm.token_bos() else []  # the bundle's tokenizer starts with BOS
    same = (bos + llm.tokenize(PROMPT_TEXT.encode(), add_bos=False, special=False))[: len(ids)] == ids
    return (f"{width}; llama.cpp's own tokenizer gives {'the same' if same else 'DIFFERENT'} {len(ids)} prompt ids"
            f"{' after BOS ' + str(bos[0]) if bos else ''} (the ids are fed directly either way)")


def variant_job(spec: dict, data: dict, name: str, ftype: int | None, system: str):
    def job() -> tuple[dict, dict]:
        source = Path(spec["gguf"])
        path, build_s = source, 0.0
        if ftype is not None:
            path = Path(spec["cache"]) / f"{source.stem.rsplit('.', 1)[0]}.{name}-from-Q4_1.gguf"
            path.parent.mkdir(parents=True, exist_ok=True)
            build_s = requantize(source, path, ftype, spec["threads"])
        n_ctx = max(len(data["prompt"]) + spec["new_tokens"], len(data["eval"]))
        side = LlamaCppDecoder(path, spec["threads"], n_ctx)
        try:
            note = (vocabulary_note(side.llm, spec, data["prompt"]) if ftype is None else
                    "re-quantized by llama.cpp from the Q4_1 file (llama_model_quantize, allow_requantize)")
            timed = bench_decoder(side, data["prompt"], spec["new_tokens"], spec["warmup"], spec["repeats"])
            logits = side.teacher_logits(data["eval"])
        finally:
            side.close()
        fields = {"size_mb": dir_mb(path), "build_s": round(build_s, 1), "teacher_method": side.teacher_method,
                  "n_ctx": n_ctx, "system_info": system, "note": note,
                  **timed}
        return fields, {"logits": logits, "tokens": np.array(timed["tokens"])}
    return job


def main() -> None:
    spec = load_spec()
    data = dict(np.load(spec["inputs"]))
    llama_cpp.llama_backend_init()
    system = llama_cpp.llama_print_system_info().decode().strip()
    log(f"llama.cpp system info: {system}")
    versions = {"llama-cpp-python": md.version("llama-cpp-python"), "numpy": np.__version__}
    wanted = spec.get("variants") or list(VARIANTS)
    run_variants(spec, "llamacpp", versions, [(n, variant_job(spec, data, n, VARIANTS[n], system)) for n in wanted])


if __name__ == "__main__":
    main()
