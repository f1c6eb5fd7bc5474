"""What an exporter hands the build: how to export a loaded model and how to capture its
golden I/O, plus the facts the manifest records. The build itself knows no model family."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgetx.errors import EdgetxError
from edgetx.exporters.causal_lm import CausalLMForward, CausalLMSpec, capture_golden, export_causal_lm

GOLDEN_DECODE_STEPS = 24


@dataclass
class ExportSource:
    name: str
    kind: str  # a registered model kind ("causal-lm", "encoder", "image-classification", ...)
    model: dict  # the manifest's `model` block (architecture facts)
    tokenizer: dict  # the manifest's `tokenizer` block
    io: dict  # the manifest's `io` block (names, dtypes, symbolic shapes)
    export: Callable[[Path, int], None]  # (onnx path, opset) -> writes the fp32 graph
    capture_golden: Callable[[], tuple[dict[str, np.ndarray], dict]]  # -> arrays, description
    source: str
    source_sha256: str
    extra_files: dict[str, Path | bytes] = field(default_factory=dict)  # bundle path -> file to copy, or contents
    notes: list[str] = field(default_factory=list)  # adjustments made for export, recorded in provenance
    # What to try when export fails (the build's error ends with it).
    export_hint: str = "If the model needs an adjustment for export, add a small named one to its exporter."
    quant_data: Callable[[], dict[str, np.ndarray]] | None = None  # held-out eval + calibration inputs
    module: torch.nn.Module | None = None  # the PyTorch model, for `verify --explain --against pytorch`
    run_torch: Callable[[dict[str, np.ndarray]], object] | None = None  # graph feeds -> PyTorch forward
    preprocessor: dict | None = None  # the manifest's `preprocessor` block (vision: its file is in extra_files)


def causal_lm_source(*, name: str, module: torch.nn.Module, forward: CausalLMForward, spec: CausalLMSpec,
                     prompts: list[list[int]], prompt_texts: list[str], facts: dict, tokenizer: dict,
                     source: str, source_sha256: str, eval_ids: list[list[int]] = (),
                     calib_ids: list[list[int]] = (), **extra) -> ExportSource:
    """An ExportSource for any causal LM that follows the single-graph prefill/decode contract."""

    notes = extra.setdefault("notes", [])

    def export(path: Path, opset: int) -> None:
        from edgetx.exporters.hf import export_with_eager_fallback

        export_with_eager_fallback(module, lambda: export_causal_lm(module, spec, path, forward=forward, opset=opset),
                                   notes)

    def golden() -> tuple[dict[str, np.ndarray], dict]:
        arrays = capture_golden(forward, spec, prompts, GOLDEN_DECODE_STEPS)
        return arrays, {"decode_steps": GOLDEN_DECODE_STEPS, "prompts": prompt_texts}

    def run_torch(feeds: dict[str, np.ndarray]):
        tensor = {name: torch.tensor(np.array(value)) for name, value in feeds.items()}
        past = [(tensor[f"past_key_values.{i}.key"], tensor[f"past_key_values.{i}.value"]) for i in range(spec.num_layers)]
        with torch.no_grad():
            return forward(tensor["input_ids"], tensor["attention_mask"], tensor["position_ids"], past)

    def quant_data() -> dict[str, np.ndarray]:
        """Held-out token sequences: `eval.i` for quantization gates, `calib.i` for calibration."""
        arrays = {f"eval.{i}": np.array([ids], dtype=np.int64) for i, ids in enumerate(eval_ids)}
        arrays.update({f"calib.{i}": np.array([ids], dtype=np.int64) for i, ids in enumerate(calib_ids)})
        return arrays

    model = {"name": name, "kind": "causal-lm", "vocab_size": spec.vocab_size,
             "max_positions": spec.max_positions, "num_layers": spec.num_layers,
             "num_kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim, **facts}
    return ExportSource(name=name, kind="causal-lm", model=model, tokenizer=tokenizer, io=spec.io_signature(),
                        export=export, capture_golden=golden, source=source, source_sha256=source_sha256,
                        module=module, run_torch=run_torch, quant_data=quant_data if eval_ids else None, **extra)


def load_source(model: str | Path | torch.nn.Module | None, *, allow_pickle: bool = False,
                trust_remote_code: bool = False, **module_settings) -> ExportSource:
    """Pick the exporter for `model`: None = the bundled reference checkpoint; a folder or file; a
    `package.module:factory` reference or an nn.Module (`module_settings` as for edgetx.build)."""
    from edgetx.exporters import edgetx_gpt, hf, module

    if isinstance(model, str) and module.is_factory_ref(model):
        loaded, settings = module.load_factory(model, allow_pickle=allow_pickle)
        given = {k: v for k, v in module_settings.items() if v is not None}
        both = sorted(set(given) & set(settings))
        if both:
            raise EdgetxError(f"{model} sets {', '.join(both)} itself; do not give {'them' if len(both) > 1 else 'it'} "
                              "again (e.g. --kind)")
        settings.update(given)
        return module.module_source(loaded, source=model, **settings)
    if isinstance(model, torch.nn.Module):
        return module.module_source(model, **module_settings)
    given = sorted(k for k, v in module_settings.items() if v is not None)
    if given:
        what = model if model is not None else "the reference checkpoint"
        raise EdgetxError(f"{', '.join(given)} describe an nn.Module (or a package.module:factory); {what} is a "
                          "model folder, file or ExportSource, which describes itself")
    if model is None:
        return edgetx_gpt.load()
    path = Path(model)
    if not path.exists():
        raise EdgetxError(f"{path}: no such model folder or file (nor a package.module:factory)")
    if path.is_dir() and edgetx_gpt.is_checkpoint(path):
        return edgetx_gpt.load(path)
    if hf.is_hf_model(path):
        return hf.load(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    raise EdgetxError(f"{path}: not a model edgetx can export; it takes an edgetx checkpoint folder "
                      "(config.json + model.safetensors from `python -m edgetx.models.train`), a Hugging Face "
                      "model folder (config.json with a model_type, plus safetensors), a .gguf file, or "
                      "package.module:factory (a function returning your nn.Module)")
