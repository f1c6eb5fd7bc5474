"""Peer worker: PyTorch eager (transformers, fp32) in the main .venv. Also prepares the SmolLM2
Hugging Face folder (de-quantized from the GGUF once) that the Optimum and genai peers build from.

    .venv/bin/python benchmarks/peer_torch.py SPEC.json      (spec written by benchmarks/peers.py)
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from _common import bench_decoder, bench_encoder, dir_mb, load_spec, log, run_variants


def prepare_smollm2(gguf: Path, out: Path) -> None:
    """GGUF -> fp32 Hugging Face folder (model + tokenizer), written atomically; ~20 s once."""
    if (out / "config.json").exists():
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer
    log(f"de-quantizing {gguf.name} to an fp32 Hugging Face folder {out} (once, ~20 s)")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    tmp.rename(out)


class TorchDecoder:
    """Greedy batch-1 decoding with transformers' own KV cache (DynamicCache)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.past = model, None

    @torch.inference_mode()
    def first(self, prompt: np.ndarray) -> int:
        out = self.model(input_ids=torch.from_numpy(prompt)[None], use_cache=True)
        self.past = out.past_key_values
        return int(out.logits[0, -1].argmax())

    @torch.inference_mode()
    def next(self, token: int) -> int:
        out = self.model(input_ids=torch.tensor([[token]]), past_key_values=self.past, use_cache=True)
        self.past = out.past_key_values
        return int(out.logits[0, -1].argmax())

    @torch.inference_mode()
    def teacher_logits(self, ids: np.ndarray) -> np.ndarray:
        return self.model(input_ids=torch.from_numpy(ids)[None], use_cache=False).logits[0].float().numpy()


def minilm_job(spec: dict, data: dict):
    def job() -> tuple[dict, dict]:
        from transformers import AutoModel
        folder = Path(spec["minilm_dir"])
        model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()

        @torch.inference_mode()
        def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()

        timings, embeddings = bench_encoder(run, data, spec["warmup"], spec["repeats"])
        return {"size_mb": dir_mb(folder / "model.safetensors"), **timings}, {"embeddings": embeddings}
    return job


def smollm2_job(spec: dict, data: dict):
    def job() -> tuple[dict, dict]:
        from transformers import AutoModelForCausalLM
        folder = Path(spec["hf_dir"])
        side = TorchDecoder(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval())
        timed = bench_decoder(side, data["prompt"], spec["new_tokens"], spec["warmup"], spec["repeats"])
        logits = side.teacher_logits(data["eval"])
        return ({"size_mb": dir_mb(folder / "model.safetensors"), **timed},
                {"logits": logits, "tokens": np.array(timed["tokens"])})
    return job


def main() -> None:
    spec = load_spec()
    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    if spec["task"] == "prepare-smollm2":
        prepare_smollm2(Path(spec["gguf"]), Path(spec["hf_dir"]))
        return
    data = dict(np.load(spec["inputs"]))
    started = time.perf_counter()
    job = minilm_job(spec, data) if spec["task"] == "minilm" else smollm2_job(spec, data)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    run_variants(spec, "pytorch", versions, [("fp32 eager", job)], setup_s=time.perf_counter() - started)


if __name__ == "__main__":
    main()
