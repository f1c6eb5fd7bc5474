"""Peer worker: Hugging Face Optimum (optimum-onnx) on onnxruntime CPU.

MiniLM: ORTModelForFeatureExtraction exported fp32, then ORTOptimizer O2, then ORTQuantizer dynamic
int8 (Optimum's preset for this CPU: avx512_vnni or avx2, per-channel) of the O2 graph.
SmolLM2: ORTModelForCausalLM exported fp32 with KV cache, greedy loop through its forward().
Exports are cached under the spec's cache folder. Runs in its own virtualenv (.cache/peers/optimum).

    .cache/peers/optimum/venv/bin/python benchmarks/peer_optimum.py SPEC.json
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from _common import bench_decoder, bench_encoder, dir_mb, load_spec, log, run_variants

NOTES: dict[str, str] = {}


def session_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return so


def cached(out: Path, make: Callable[[Path], None], what: str) -> Path:
    """`make(tmp)` once, renamed to `out` when it succeeded."""
    if out.exists():
        return out
    log(f"optimum: {what} -> {out} (once)")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    make(tmp)
    tmp.rename(out)
    return out


def quantization_preset():
    """Optimum's dynamic-int8 preset for this CPU (the one its docs tell you to pick)."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = "avx512_vnni" if "avx512_vnni" in flags else "avx2"
    return name, getattr(AutoQuantizationConfig, name)(is_static=False)


def minilm_folder(name: str, source: Path, cache: Path) -> tuple[Path, str]:
    """Build (once) and return (folder, onnx file name) of a MiniLM variant: fp32 export, O2, O2+int8."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    if name == "fp32":
        return cached(cache / "minilm-fp32", lambda tmp: ORTModelForFeatureExtraction.from_pretrained(
            source, export=True).save_pretrained(tmp), "export MiniLM (ORTModelForFeatureExtraction)"), "model.onnx"
    if name == "O2":
        fp32, _ = minilm_folder("fp32", source, cache)
        return cached(cache / "minilm-o2", lambda tmp: ORTOptimizer.from_pretrained(fp32).optimize(
            AutoOptimizationConfig.O2(), save_dir=tmp), "ORTOptimizer O2"), "model_optimized.onnx"
    o2, o2_file = minilm_folder("O2", source, cache)
    preset, qconfig = quantization_preset()

    def quantize(tmp: Path) -> None:
        try:
            ORTQuantizer.from_pretrained(o2, file_name=o2_file).quantize(qconfig, save_dir=tmp)
        except Exception as error:
            if "data type" not in str(error):
                raise
            # FACTS.md: quantizing a fused graph fails with "Unable to find data type for weight_name";
            # symbolic shape inference on the fused graph first fixes it.
            import onnx
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
            log(f"optimum: ORTQuantizer failed ({str(error)[:80]}); retrying after symbolic shape inference")
            inferred = o2.with_name("minilm-o2-shapes")
            shutil.copytree(o2, inferred, dirs_exist_ok=True)
            model = SymbolicShapeInference.infer_shapes(onnx.load(o2 / o2_file), auto_merge=True)
            onnx.save(model, inferred / o2_file)
            shutil.rmtree(tmp, ignore_errors=True)
            ORTQuantizer.from_pretrained(inferred, file_name=o2_file).quantize(qconfig, save_dir=tmp)
            (tmp / "NOTE.txt").write_text("symbolic shape inference applied before ORTQuantizer")

    int8 = cached(cache / f"minilm-o2-int8-{preset}", quantize, f"ORTQuantizer dynamic int8 ({preset} preset)")
    note = (int8 / "NOTE.txt").read_text().strip() if (int8 / "NOTE.txt").exists() else ""
    ops = "/".join(getattr(op, "value", str(op)) for op in qconfig.operators_to_quantize)
    NOTES[name] = "; ".join(filter(None, [f"{preset} preset: per_channel={qconfig.per_channel}, "
                                          f"weights {qconfig.weights_dtype.name}, ops {ops}", note]))
    return int8, "model_optimized_quantized.onnx"


def minilm_job(spec: dict, data: dict, name: str):
    def job() -> tuple[dict, dict]:
        from optimum.onnxruntime import ORTModelForFeatureExtraction
        folder, file_name = minilm_folder(name, Path(spec["minilm_dir"]), Path(spec["cache"]))
        model = ORTModelForFeatureExtraction.from_pretrained(folder, file_name=file_name,
                                                             session_options=session_options(spec["threads"]))

        def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
            feeds = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
            if "token_type_ids" in model.input_names:
                feeds["token_type_ids"] = torch.from_numpy(types)
            return model(**feeds).last_hidden_state.numpy()

        timings, embeddings = bench_encoder(run, data, spec["warmup"], spec["repeats"])
        return ({"size_mb": dir_mb(folder / file_name), "note": NOTES.get(name, ""), **timings},
                {"embeddings": embeddings})
    return job


class OptimumDecoder:
    """Greedy batch-1 loop through ORTModelForCausalLM.forward (torch tensors in and out, as generate() does)."""

    def __init__(self, model):
        self.model, self.past, self.length = model, None, 0

    def _run(self, ids: torch.Tensor, past) -> int:
        self.length += ids.shape[1]
        out = self.model(input_ids=ids, attention_mask=torch.ones((1, self.length), dtype=torch.long),
                         past_key_values=past, use_cache=True)
        self.past = out.past_key_values
        return int(out.logits[0, -1].argmax())

    def first(self, prompt: np.ndarray) -> int:
        self.length = 0
        return self._run(torch.from_numpy(prompt)[None], None)

    def next(self, token: int) -> int:
        return self._run(torch.tensor([[token]]), self.past)

    def teacher_logits(self, ids: np.ndarray) -> np.ndarray:
        out = self.model(input_ids=torch.from_numpy(ids)[None], attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                         use_cache=True)
        return out.logits[0].float().numpy()


def smollm2_job(spec: dict, data: dict):
    def job() -> tuple[dict, dict]:
        from optimum.onnxruntime import ORTModelForCausalLM
        folder = cached(Path(spec["cache"]) / "smollm2-fp32", lambda tmp: ORTModelForCausalLM.from_pretrained(
            spec["hf_dir"], export=True, use_cache=True).save_pretrained(tmp), "export SmolLM2 (ORTModelForCausalLM)")
        model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True,
                                                    session_options=session_options(spec["threads"]))
        side = OptimumDecoder(model)
        timed = bench_decoder(side, data["prompt"], spec["new_tokens"], spec["warmup"], spec["repeats"])
        return ({"size_mb": dir_mb(folder), **timed},
                {"logits": side.teacher_logits(data["eval"]), "tokens": np.array(timed["tokens"])})
    return job


def main() -> None:
    spec = load_spec()
    data = dict(np.load(spec["inputs"]))
    versions = {p: md.version(p) for p in ("optimum", "optimum-onnx", "onnxruntime", "transformers", "torch")}
    torch.set_num_threads(spec["threads"])
    if spec["task"] == "smollm2":
        run_variants(spec, "optimum", versions, [("fp32", smollm2_job(spec, data))])
        return
    names = spec.get("variants") or ["fp32", "O2", "O2+int8"]
    run_variants(spec, "optimum", versions, [(n, minilm_job(spec, data, n)) for n in names])


if __name__ == "__main__":
    main()
