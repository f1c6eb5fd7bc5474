"""Coverage sweep: how many of transformers' own model types edgetx builds and verifies with defaults.

For each (model type, task) cell taken from transformers' registries — causal LM, base encoders (the
masked-LM registry's types, exported as the base model), sequence and token classification, image
classification and bare image models (image encoders, saved with their image processor) — make a tiny
random-init model from the type's config class (standard attributes shrunk through the config's
attribute_map; sub-configs of composite configs too; a few named per-family tweaks in TWEAKS), save it
with a real tokenizer (tests/hf_models.py), build it with edgetx (the build runs parity) and read the
bundle's manifest: parity max |diff|, greedy agreement (causal LM) or embedding cosine (encoders).

Each cell runs in its own process (`coverage.py --cell TYPE TASK`, make-model + build, nice'd, with a
timeout) and leaves its result in benchmarks/results/coverage-cells/<transformers>-<recipe>/, so a sweep
resumes where it stopped. The table covers every cell of that folder and is written to
benchmarks/results/<date>-coverage-tf<version>-<recipe>.{md,json} (date, machine, versions, command).

    python benchmarks/coverage.py --tasks causal-lm --recipe fast -j 1
    python benchmarks/coverage.py --types llama,gpt2,bert --json out.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import datetime as dt
import inspect
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks/results"
CACHE = ROOT / ".cache/coverage"
TASKS = ("causal-lm", "encoder", "seq-cls", "token-cls", "seq2seq", "speech-seq2seq", "image-cls", "image-encoder",
         "zero-shot")
REGISTRY = {"causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "encoder": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
            "seq-cls": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
            "token-cls": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
            # encoder-decoders: text to text, and speech to text (saved with Whisper's feature extractor)
            "seq2seq": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
            "speech-seq2seq": "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
            # vision: image-classification heads, and the bare image models transformers registers for image
            # feature extraction (each saved with the image processor transformers maps to its type)
            "image-cls": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "image-encoder": "MODEL_FOR_IMAGE_MAPPING_NAMES",
            # image-text dual encoders (CLIP, SigLIP, ...), saved with a tokenizer too: both towers, zero-shot labels
            "zero-shot": "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES"}
VISION_TASKS = ("image-cls", "image-encoder", "zero-shot")
AUTO_CLASS = {"causal-lm": "AutoModelForCausalLM", "encoder": "AutoModel",
              "seq-cls": "AutoModelForSequenceClassification", "token-cls": "AutoModelForTokenClassification",
              "seq2seq": "AutoModelForSeq2SeqLM", "speech-seq2seq": "AutoModelForSpeechSeq2Seq"}
# Recipes: the build's options. default = edgetx's defaults; fast = fp32 only, no fused candidates (CI).
RECIPES = {"default": {}, "fast": {"quantize": (), "optimize": False}, "fp32": {"quantize": ()}}

# The representative subset CI runs (tests/test_coverage.py, on both transformers majors): 39 types, decoders of
# each attention/MLP/norm/position style, encoders with each head, encoder-decoders (text and speech) and vision models. Only cells that pass on both
# majors belong here; the rest are in the full sweep's table.
SUBSET = {
    "causal-lm": ["llama",  # grouped-query attention, rope, RMSNorm, SwiGLU
                  "mistral", "qwen2",  # sliding window; q/k/v biases
                  "qwen3", "gemma2", "gemma3_text",  # q/k-norm; soft-capping + alternating windows; local/global rope
                  "phi", "phi3", "persimmon",  # partial rotary + parallel block; fused qkv; q/k LayerNorm, squared ReLU
                  "gpt2", "gpt_bigcode", "opt", "bloom",  # learned positions (Conv1D); multi-query; offsets; ALiBi
                  "gpt_neox", "olmo2", "cohere2", "starcoder2",  # parallel residual; post-norm; windowed+full; biases
                  "granite", "stablelm",  # scaled residuals/logits; partial rotary + LayerNorm
                  "bart"],  # an encoder-decoder family's decoder: positions ignore the mask (not padding-invariant)
    # mixture-of-experts decoders (mixtral, qwen2_moe) pass on transformers 5 but not on 4.57 (torch.export:
    # GuardOnDataDependentSymNode in the expert routing), so they are in the full sweep only
    "encoder": ["bert", "albert", "electra", "esm",  # absolute positions; shared layers; embedding projection; rope
                "convbert"],  # convolutions across padding (not padding-invariant)
    "seq-cls": ["deberta-v2", "distilbert", "data2vec-text"],  # disentangled attention; no token types; RoBERTa-style
    "token-cls": ["deberta", "camembert", "ernie", "flaubert"],  # relative attention; ...; task ids; XLM-style
    "seq2seq": ["t5", "marian"],  # relative position buckets; learned positions, tied embeddings
    "speech-seq2seq": ["whisper"],  # log-mel features in, the language/task prompt
    "image-cls": ["vit", "swin"],  # patches + CLS token; shifted windows
    "image-encoder": ["dinov2"],  # its pooler_output (the normed CLS token) as the embedding
    "zero-shot": ["siglip"],  # both towers; no text mask, last-position pooling (texts padded to full length), sigmoid
}

# The standard size attributes, set wherever a config has them (directly or through attribute_map).
SIZES = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 128, "head_dim": 16, "max_position_embeddings": 512,
         # common variants of the same few sizes
         "ffn_dim": 128, "n_inner": 128, "d_ff": 128, "embedding_size": 64, "moe_intermediate_size": 64,
         "shared_expert_intermediate_size": 64, "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4,
         "num_experts_per_tok": 2, "rotary_dim": 8, "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8,
         "qk_nope_head_dim": 8, "v_head_dim": 16, "d_head": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
         "linear_key_head_dim": 16, "linear_value_head_dim": 16, "num_labels": 3,
         # encoder-decoder families name each side's sizes (their ...ForCausalLM is the decoder alone)
         "decoder_layers": 2, "encoder_layers": 2, "decoder_attention_heads": 4, "encoder_attention_heads": 4,
         "decoder_ffn_dim": 128, "encoder_ffn_dim": 128}
# Vision sizes, on top of SIZES wherever a vision config has them: 32-pixel images in 8-pixel patches.
VISION_SIZES = {"image_size": 32, "patch_size": 8, "embed_dim": 32}
# Named per-family tweaks: attribute overrides applied after SIZES, for types whose defaults clash with
# the tiny sizes (documented reason next to each).
TWEAKS: dict[str, dict] = {
    "funnel": {"block_sizes": [1, 1]},  # its layer count is the sum of block_sizes (num_hidden_layers is derived)
    # four stages of 2-24 heads (lists, which SIZES leaves alone): two stages of 2 and 4 heads (named as
    # num_attention_heads too, which attribute_map maps to num_heads), 4-pixel patches and 4-patch windows
    "swin": {"depths": [1, 1], "num_heads": [2, 4], "num_attention_heads": [2, 4], "patch_size": 4, "window_size": 4},
}
TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "cls_token_id", "decoder_start_token_id")


def _registry(task: str) -> dict:
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, REGISTRY[task])


def cells(tasks, types=None) -> list[tuple[str, str]]:
    """(model type, task) for every type in each task's registry (or the given types that are in it)."""
    from transformers.models.auto import modeling_auto

    out = []
    for task in tasks:
        registry = getattr(modeling_auto, REGISTRY[task])
        names = sorted(registry) if types is None else [t for t in types if t in registry]
        out += [(t, task) for t in names]
    return out


# --- one cell: make the tiny model, build it, read the manifest -------------------------------------------

def _tokenizer(kind: str):
    """The byte-level BPE (decoders) or WordPiece (encoders) of tests/hf_models.py, trained once and cached."""
    sys.path.insert(0, str(ROOT / "tests"))
    import hf_models
    from transformers import AutoTokenizer

    import transformers

    folder = CACHE / f"tokenizer-{kind}-tf{transformers.__version__.split('.')[0]}"  # 4.x cannot read 5's folders
    if not (folder / "tokenizer.json").is_file():
        tokenizer = hf_models.byte_level_tokenizer() if kind == "bpe" else hf_models.wordpiece_tokenizer()
        tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _get(config, name: str, default=None):
    """An attribute of a config, also one that transformers 5 calls per-layer in a heterogeneous config (read as
    its global value: reading it plainly raises AmbiguousGlobalPerLayerAttributeError)."""
    try:
        return getattr(config, name, default)
    except RuntimeError:
        return config._getattr_without_heterogeneous_validation(name, default)


def _settable(config_class, name: str, probe=None) -> bool:
    """Whether `name` (or what attribute_map maps it to) can be set: some configs derive it in a read-only property,
    or a property whose setter refuses (NotImplementedError: set these other attributes instead)."""
    name = getattr(config_class, "attribute_map", {}).get(name, name)
    attribute = inspect.getattr_static(config_class, name, None)
    if not isinstance(attribute, property):
        return True
    if attribute.fset is None:
        return False
    if probe is not None:
        try:
            attribute.fset(probe, _get(probe, name))
        except NotImplementedError:
            return False
        except Exception:  # the setter's own checks: setting the tiny value decides
            pass
    return True


def _sub_config_class(config_class, key: str, sub_class, probe):
    """The class of a sub-config: named in sub_configs, or (AutoConfig there) that of the default sub-config."""
    if isinstance(sub_class, type) and sub_class.__name__ != "AutoConfig":
        return sub_class
    default = _get(probe, key)
    return type(default) if hasattr(default, "to_dict") and type(default).__name__ != "AutoConfig" else None


def _shrink(config_class, tokenizer, overrides: dict, depth: int = 0, sizes: dict | None = None):
    """A config of `config_class` with the standard sizes shrunk (`sizes`, default SIZES); composite configs get
    tiny sub-configs."""
    probe = config_class()
    kwargs = {}
    sizes = SIZES if sizes is None else sizes
    for name, value in {**sizes, "vocab_size": len(tokenizer)}.items():
        current = _get(probe, name, _MISSING)
        if current is not _MISSING and not isinstance(current, (dict, list)) and _settable(config_class, name, probe):
            kwargs[name] = value
    if "qk_rope_head_dim" in kwargs:  # latent attention (MLA): head_dim is the rotary part, q/k = nope + rope
        kwargs["head_dim"] = kwargs["qk_rope_head_dim"]
    if "kv_lora_rank" in kwargs and "num_key_value_heads" in kwargs:  # MLA shares one latent, expanded to every
        kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]  # head: no grouped key/value heads
    for name in TOKEN_IDS:
        if hasattr(probe, name):
            token = {"pad_token_id": tokenizer.pad_token_id, "sep_token_id": tokenizer.sep_token_id,
                     "cls_token_id": tokenizer.cls_token_id}.get(name, tokenizer.eos_token_id
                                                                 if tokenizer.eos_token_id is not None
                                                                 else tokenizer.cls_token_id)
            kwargs[name] = token if token is not None else 0
    for key, sub_class in (getattr(config_class, "sub_configs", None) or {}).items():
        sub_class = _sub_config_class(config_class, key, sub_class, probe)
        if depth < 2 and sub_class is not None:
            kwargs[key] = _shrink(sub_class, tokenizer, overrides.get(key, {}), depth + 1, sizes).to_dict()
    kwargs.update({k: v for k, v in overrides.items() if not isinstance(v, dict) or k not in kwargs})
    layers, full_layers = kwargs.get("num_hidden_layers"), _get(probe, "num_hidden_layers")
    representatives = list(range(layers or 0))
    if layers and isinstance(full_layers, int) and full_layers > layers:
        # per-layer lists a default config spells out in full (layer_types, mlp_layer_types, ...): one layer of
        # each kind the full model mixes, so the config's own checks (list length == layers) hold
        for name, full in vars(probe).items():
            if isinstance(full, list) and len(full) == full_layers and name not in kwargs and \
                    all(isinstance(x, (str, int, bool)) or x is None for x in full) and _settable(config_class, name):
                kwargs[name] = _shrink_layer_types(full, layers)
        kinds = _get(probe, "layer_types")
        if isinstance(kinds, list) and len(kinds) == full_layers:  # tiny layer i stands for the first of its kind
            representatives = [kinds.index(kind) for kind in _shrink_layer_types(kinds, layers)]
    per_layer = _per_layer_config(probe, kwargs, representatives)
    if per_layer:
        kwargs["per_layer_config"] = per_layer
    try:
        config = config_class(**kwargs)
    except Exception as error:  # families without grouped key/value heads say so in their config's checks
        heads = kwargs.get("num_attention_heads")
        if "num_key_value_heads" not in str(error) or kwargs.get("num_key_value_heads") in (None, heads) or \
                "num_key_value_heads" in overrides:
            raise
        config = config_class(**{**kwargs, "num_key_value_heads": heads})
    for name in ("layer_types", "mlp_layer_types"):  # configs that derive them in __init__ from other settings
        types, full = _get(config, name), _get(probe, name)
        if isinstance(types, list) and isinstance(full, list) and layers and _settable(config_class, name) and (
                len(types) != layers or set(types) < set(full)):
            setattr(config, name, _shrink_layer_types(full, layers))
    return config


_MISSING = object()


def _per_layer_config(probe, kwargs: dict, representatives: list[int]) -> dict:
    """A heterogeneous config's per-layer overrides (transformers 5) for the tiny layers: each tiny layer takes
    those of the full layer it stands for, sizes scaled by the same factor as the global ones."""
    spec = getattr(probe, "_heterogeneity_spec", None)
    overrides = getattr(spec, "per_layer_overrides", None) or {}
    if not overrides:
        return {}
    if representatives and not any(j in overrides for j in representatives):  # no layer kinds: the last tiny
        representatives = representatives[:-1] + [min(overrides)]  # layer stands for the first overridden one
    out = {}
    for i, j in enumerate(representatives):
        layer = {}
        for name, value in overrides.get(j, {}).items():
            full = _get(probe, name)
            if name in kwargs and isinstance(value, int) and isinstance(full, int) and full:
                value = max(1, round(kwargs[name] * value / full))
            layer[name] = value
        if layer:
            out[i] = layer
    return out


def _shrink_layer_types(types: list, n: int) -> list:
    """n layer types with one of each kind the full model mixes (sliding + full attention, linear + full)."""
    kinds = list(dict.fromkeys(types))
    return (kinds + [kinds[-1]] * n)[:n]


def make_model(model_type: str, task: str, folder: Path, overrides: dict | None = None) -> None:
    """A tiny random-init model of `model_type` for `task`, saved with its tokenizer in `folder`."""
    import torch
    import transformers
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    overrides = {**TWEAKS.get(model_type, {}), **(overrides or {})}
    if task in VISION_TASKS:  # images in: the tiny config and the type's own image processor (tests/vision_models.py)
        sys.path.insert(0, str(ROOT / "tests"))
        import vision_models

        tokenizer = _tokenizer("wordpiece")  # a composite config's text side shrinks its vocabulary to it
        vision_models.save_tiny_vision_type(model_type, task, folder, lambda cls: _shrink(
            cls, tokenizer, overrides, sizes={**SIZES, **VISION_SIZES}))
        if task == "zero-shot":  # its text side: the tokenizer the composite config's vocabulary was shrunk to
            tokenizer.save_pretrained(folder)
        return
    decoder = task == "causal-lm"
    tokenizer = _tokenizer("bpe" if task in ("causal-lm", "seq2seq", "speech-seq2seq") else "wordpiece")
    if decoder and model_type in _registry("encoder"):  # an encoder family's causal LM: causal self-attention
        overrides.setdefault("is_decoder", True)
    config = _shrink(config_class, tokenizer, overrides)
    if getattr(config, "architectures", None) is None:  # auto classes with two models per type iterate over it
        config.architectures = []
    torch.manual_seed(0)
    model = getattr(transformers, AUTO_CLASS[task]).from_config(config)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    if task == "speech-seq2seq":  # the type's own audio front end, as a real folder has it (edgetx computes Whisper's)
        from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES

        name = FEATURE_EXTRACTOR_MAPPING_NAMES.get(model_type, "WhisperFeatureExtractor")
        options = {"feature_size": getattr(config, "num_mel_bins", 80)} if name == "WhisperFeatureExtractor" else {}
        getattr(transformers, name)(**options).save_pretrained(folder)


def _summary(manifest: dict) -> dict:
    """Parity max |diff|, greedy agreement or embedding cosine from the fp32 variant's checks."""
    checks = manifest["variants"]["fp32"]["parity"]["checks"]
    diffs = [c["max_abs"] for c in checks if c.get("max_abs") is not None]
    out = {"parity_max_abs": max(diffs) if diffs else None, "checks": {c["name"]: c["passed"] for c in checks},
           "variants": sorted(manifest["variants"])}
    for c in checks:
        if c["name"] == "greedy decode" and c.get("tokens"):
            out["greedy"] = f"{c['tokens'][0]}/{c['tokens'][1]}"
        found = re.search(r"cosine min ([0-9.]+)", c.get("detail", ""))
        if found:
            out["cosine"] = float(found.group(1))
    out["notes"] = manifest["provenance"].get("export_notes") or []
    return out


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = re.sub(r"The full trace is in \S+\.", "", text)
    text = text.replace(" If this architecture needs an adjustment, add a small named one in exporters/"
                        "hf_decoder.py (ADJUSTMENTS).", "")
    text = re.sub(r"/\S*/coverage-[^/\s]*/(model|bundle)\S*", r"<\1>", text)
    if type(error).__name__ == "EdgetxError" or type(error).__name__ == "UnsupportedModel":
        return text[:300]
    frames = traceback.extract_tb(error.__traceback__)
    where = f" [{Path(frames[-1].filename).name}:{frames[-1].lineno}]" if frames else ""
    return f"{type(error).__name__}: {text[:260]}{where}"


def run_cell(model_type: str, task: str, recipe: str, work: Path, overrides: dict | None = None) -> dict:
    """Make and build one cell in this process; never raises."""
    from edgetx.build import build

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"type": model_type, "task": task, "recipe": recipe}
    started = time.perf_counter()
    stage = "make tiny model"
    try:
        make_model(model_type, task, work / "model", overrides)
        stage = "build"
        options = RECIPES[recipe]
        bundle = build(work / "model", work / "bundle", force=True, optimize=options.get("optimize", True),
                       quantize=options.get("quantize"), stage=_quiet_stage)
        result.update(build="ok", **_summary(bundle.manifest))
    except Exception as error:  # every failure is one line in the table
        result.update(build="failed" if stage == "build" else "no model", reason=f"{stage}: {one_line(error)}")
        (work / "trace.txt").write_text(traceback.format_exc())
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["run"] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _commit()}
    return result


def _commit() -> str:
    """edgetx's commit (short), with "+" when the working tree has changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
    return head + ("+" if dirty else "")


def _quiet_stage(title):
    import contextlib

    return contextlib.nullcontext()


# --- the sweep ---------------------------------------------------------------------------------------------

def versions() -> dict:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("transformers", "torch", "onnx", "onnxscript", "onnxruntime")}


def cell_folder(recipe: str) -> Path:
    import importlib.metadata as md

    return RESULTS / "coverage-cells" / f"tf{md.version('transformers')}-{recipe}"


def _spawn(model_type: str, task: str, recipe: str, timeout: float, folder: Path) -> dict:
    """One cell in its own (nice'd) process with a timeout; its result file is the answer."""
    target = folder / task / f"{model_type}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"coverage-{model_type}-") as work:
        command = ["nice", "-n", "5", sys.executable, str(Path(__file__).resolve()), "--cell", model_type, task,
                   "--recipe", recipe, "--work", work, "--result", str(target)]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
        except subprocess.TimeoutExpired:
            result = {"type": model_type, "task": task, "recipe": recipe, "build": "timeout",
                      "reason": f"timed out after {timeout:.0f} s (make + build)", "seconds": timeout,
                      "run": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "commit": _commit()}}
            target.write_text(json.dumps(result, indent=1))
            return result
        if not target.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            result = {"type": model_type, "task": task, "recipe": recipe, "build": "crashed",
                      "reason": f"the cell's process exited {done.returncode}: {tail[:240]}",
                      "seconds": round(time.perf_counter() - started, 1),
                      "run": {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "commit": _commit()}}
            target.write_text(json.dumps(result, indent=1))
            return result
        return json.loads(target.read_text())


def load_results(folder: Path, wanted: set[tuple[str, str]] | None = None) -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json"))]
    return [r for r in rows if wanted is None or (r["type"], r["task"]) in wanted]


def passed(row: dict) -> bool:
    return row.get("build") == "ok"


def distinct_types(rows: list[dict]) -> set[str]:
    """The model types with at least one passing cell."""
    return {r["type"] for r in rows if passed(r)}


def render(rows: list[dict]) -> list[str]:
    lines = ["| type | task | build | parity max |diff| | greedy / cosine | reason |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (TASKS.index(r["task"]), r["type"])):
        parity = f"{r['parity_max_abs']:.2g}" if r.get("parity_max_abs") is not None else ""
        quality = r.get("greedy") or (f"{r['cosine']:.6f}" if r.get("cosine") is not None else "")
        reason = (r.get("reason") or "; ".join(r.get("notes", []))).replace("|", "\\|")
        lines.append(f"| {r['type']} | {r['task']} | {r['build']} | {parity} | {quality} | {reason} |")
    return lines


def reason_groups(rows: list[dict], width: int = 110) -> Counter:
    """Failure reasons with the type-specific parts (names, numbers) blurred, for grouping."""
    def key(reason: str) -> str:
        reason = re.sub(r"\b[A-Z]\w*(For\w+|Model|LMHeadModel)\b", "<Model>", reason)
        reason = re.sub(r"'[^']*'", "'…'", reason)
        reason = re.sub(r"\d+", "N", reason)
        return reason[:width]
    return Counter(key(r["reason"]) for r in rows if not passed(r))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def write_report(rows: list[dict], recipe: str, command: str, started: dt.datetime, stem: str | None = None,
                 missing: list[tuple[str, str]] = ()) -> Path:
    info = versions()
    date = started.strftime("%Y-%m-%d")
    stem = stem or f"{date}-coverage-tf{info['transformers']}-{recipe}"
    by_task = {task: (sum(passed(r) for r in rows if r["task"] == task), sum(r["task"] == task for r in rows))
               for task in TASKS}
    total = sum(passed(r) for r in rows)
    types = distinct_types(rows)
    commit = _commit()
    earlier = [r for r in rows if r.get("run", {}).get("date", "") < started.isoformat(timespec="seconds")]
    resumed = []
    if earlier:
        runs = Counter(f"{r.get('run', {}).get('date', '?')[:10]} at {r.get('run', {}).get('commit', '?')}"
                       for r in earlier)
        resumed = [f"Assembled from resumed cells: {len(earlier)} of {len(rows)} cells were run before this command "
                   "(cached in benchmarks/results/coverage-cells/) — " +
                   ", ".join(f"{n} on {run}" for run, n in sorted(runs.items())) + ".", ""]
    if missing:  # registry cells without a result: named, never counted as failures
        by = Counter(task for _, task in missing)
        resumed += [f"Not run: {len(missing)} registry cells have no result in this table ("
                    + ", ".join(f"{task} {n}" for task, n in by.items()) + "): "
                    + "; ".join(f"{task}: " + ", ".join(t for t, k in missing if k == task) for task in by) + ".", ""]
    head = [f"# Coverage, {started:%Y-%m-%d %H:%M} UTC — transformers {info['transformers']}, recipe `{recipe}`", "",
            f"Machine: {machine()}. Versions: " + ", ".join(f"{k} {v}" for k, v in info.items())
            + f"; edgetx at {commit} (\"+\": with uncommitted changes).", "",
            f"Command: `{command}`", "", *resumed,
            f"**{len(types)} distinct model types pass** (a type counts once if any of its tasks passes); "
            f"{total} of {len(rows)} cells pass (build + parity): "
            + ", ".join(f"{task} {p}/{n}" for task, (p, n) in by_task.items() if n) + ".", "",
            "## Failures grouped by reason", "", "| cells | reason |", "|---|---|"]
    head += [f"| {n} | {reason.replace('|', chr(92) + '|')} |" for reason, n in reason_groups(rows).most_common()]
    md = head + ["", "## Cells", ""] + render(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    payload = {"date": started.isoformat(timespec="seconds"), "machine": machine(), "versions": info,
               "recipe": recipe, "command": command, "commit": commit, "passed": total, "cells": len(rows),
               "distinct_types_passed": len(types), "resumed_cells": len(earlier),
               "not_run": [list(cell) for cell in missing],
               "by_task": {t: {"passed": p, "cells": n} for t, (p, n) in by_task.items()}, "rows": rows}
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    return RESULTS / f"{stem}.md"


def sweep(todo: list[tuple[str, str]], recipe: str, jobs: int, timeout: float, redo: bool = False,
          log=print) -> list[dict]:
    folder = cell_folder(recipe)
    pending = [c for c in todo if redo or not (folder / c[1] / f"{c[0]}.json").is_file()]
    log(f"{len(todo)} cells, {len(todo) - len(pending)} already done in {folder.relative_to(ROOT)}, "
        f"{len(pending)} to run with -j {jobs}")
    with futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        running = {pool.submit(_spawn, t, task, recipe, timeout, folder): (t, task) for t, task in pending}
        for i, done in enumerate(futures.as_completed(running), 1):
            r = done.result()
            status = r["build"] + (f" parity {r['parity_max_abs']:.2g}" if r.get("parity_max_abs") is not None else "")
            log(f"[{i}/{len(pending)}] {r['task']:9} {r['type']:28} {status:22} {r['seconds']:6.1f}s "
                f"{(r.get('reason') or '')[:150]}")
    return load_results(folder, set(todo))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", help="comma-separated model types (default: every type in the registries)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--subset", action="store_true", help="the representative subset CI runs (SUBSET)")
    parser.add_argument("--recipe", default="default", choices=sorted(RECIPES),
                        help="default = edgetx build's defaults; fast = --quantize none --no-optimize (CI)")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="cells in parallel (default 1)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per cell (make + build)")
    parser.add_argument("--redo", action="store_true", help="run cells that already have a result again")
    parser.add_argument("--json", type=Path, help="also write the rows of this run here")
    parser.add_argument("--report-only", action="store_true",
                        help="run no cells: write the table of these tasks from the cells already done (names the "
                             "registry cells that have no result)")
    parser.add_argument("--cell", nargs=2, metavar=("TYPE", "TASK"), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell:
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        result = run_cell(*args.cell, args.recipe, args.work)
        traces = [args.work / "trace.txt", args.work / "bundle.export-error.log"]
        if result["build"] != "ok":  # kept beside the result: the one-line reason's long story
            args.result.with_suffix(".trace.txt").write_text(
                "\n".join(p.read_text() for p in traces if p.is_file()))
        args.result.write_text(json.dumps(result, indent=1))
        return 0
    started = dt.datetime.now(dt.timezone.utc)
    tasks = [t.strip() for t in args.tasks.split(",")]
    unknown = set(tasks) - set(TASKS)
    if unknown:
        parser.error(f"unknown task(s) {', '.join(sorted(unknown))}; choose from {', '.join(TASKS)}")
    if args.subset:
        todo = [(t, task) for task in tasks for t in SUBSET[task]]
    else:
        todo = cells(tasks, args.types.split(",") if args.types else None)
    command = "python benchmarks/coverage.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.report_only:
        rows = load_results(cell_folder(args.recipe), set(todo))
        done = {(r["type"], r["task"]) for r in rows}
        report = write_report(rows, args.recipe, command, started, missing=[c for c in todo if c not in done])
        print(f"{len(distinct_types(rows))} distinct model types pass; {sum(passed(r) for r in rows)} of {len(rows)} "
              f"cells; {len(todo) - len(done)} registry cells not run; report: {report.relative_to(ROOT)}")
        return 0
    rows = sweep(todo, args.recipe, args.jobs, args.timeout, args.redo)
    partial = bool(args.types or args.subset)
    report = write_report(load_results(cell_folder(args.recipe)) if not partial else rows, args.recipe, command,
                          started, stem=None if not partial else
                          f"{started:%Y-%m-%d}-coverage-tf{versions()['transformers']}-{args.recipe}-"
                          + ("subset" if args.subset else "types"))
    print("\n".join(render(rows)))
    ok = sum(passed(r) for r in rows)
    print(f"\n{ok} of {len(rows)} cells pass; report: {report.relative_to(ROOT)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
