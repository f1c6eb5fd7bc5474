"""`convert --to genai`: each decoder variant's folder made into one that onnxruntime-genai loads as it is.

onnxruntime-genai (C, C++, C#, Java, Python, Android) runs a folder holding `genai_config.json`, the ONNX model and
the tokenizer. The variant's folder already holds the model (and its weights file), and genai refuses a config that
points elsewhere (`..` in a path), so the config and the tokenizer files go beside it; nothing is copied twice.

- the config maps edgetx's causal-LM graph contract (edgetx.kinds.decoding) onto genai's names, type `decoder`, with
  the model's layers, KV heads, head size, context and token ids. `past_present_share_buffer` (genai's fast CPU path:
  one KV buffer allocated once, written in place) is on exactly when edgetx itself shares the buffer: every past is
  read only by a fused GroupQueryAttention that writes its present in place (edgetx.kinds.decoding.
  shares_cache_buffer), whose `seqlens_k` / `total_sequence_length` come from the attention mask's length as genai
  feeds it (edgetx.passes.gqa_padding);
- the tokenizer: genai's (onnxruntime-extensions) reads a Hugging Face tokenizer.json. A byte-level BPE whose decoder
  also lists SentencePiece steps (ByteFallback, Fuse, Replace '▁'; GGUF conversions write them) decodes to raw
  byte-level symbols there, so it gets the plain ByteLevel decoder when `tokenizers` shows the two agree on every
  text checked; the reference GPT's byte vocabulary is written as the equivalent byte-level BPE (id = byte value);
  a bundle without a tokenizer gets none (apps feed token ids);
- before anything is recorded, genai's own greedy loop on the staged folder must pick the same tokens as edgetx's
  Generator on onnxruntime CPU, same variant, same prompt (the golden one).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgetx import progress
from edgetx.build.convert import link_or_copy
from edgetx.bundle import Bundle
from edgetx.errors import EdgetxError
from edgetx.kinds import kind_of
from edgetx.kinds.decoding import PAST_PREFIX, greedy, shares_cache_buffer
from edgetx.passes.files import data_file
from edgetx.runtimes.genai import GENAI_FORMAT

CONFIG = "genai_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHECK_STEPS = 24  # greedy steps compared between genai's loop and edgetx's Generator
SAMPLE_TEXTS = ("Hello, world! 1234", "def f(x):\n    return x * 2\n", "naïve café — 東京 🙂", "  spaces\tand\nlines  ")


def genai_config(bundle: Bundle, model_file: str, shares_buffer: bool, graph) -> dict:
    """genai_config.json for one variant: edgetx's graph contract in genai's names."""
    pasts = [s for s in bundle.io["inputs"] if s["name"].startswith(PAST_PREFIX) and s["name"].endswith(".key")]
    kv_heads, head_size = pasts[0]["shape"][1], pasts[0]["shape"][3]
    heads = next((a.i for n in graph.node if n.op_type == "GroupQueryAttention" for a in n.attribute
                  if a.name == "num_heads"), kv_heads)
    spec, model = bundle.manifest.tokenizer, bundle.model
    eos = list(spec.get("eos_token_ids") or [])
    pad = spec.get("pad_token_id")
    pad = pad if pad is not None else (eos[0] if eos else 0)
    names = {s["name"] for s in bundle.io["inputs"]}
    context = model.get("max_positions") or 2048
    return {
        "model": {
            "type": "decoder", "context_length": context, "vocab_size": model.get("vocab_size"),
            "eos_token_id": eos, "pad_token_id": pad,
            "decoder": {
                "filename": model_file, "session_options": {"log_id": "edgetx", "provider_options": []},
                "num_hidden_layers": len(pasts), "num_key_value_heads": kv_heads, "num_attention_heads": heads,
                "head_size": head_size, "hidden_size": heads * head_size,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           **({"position_ids": "position_ids"} if "position_ids" in names else {}),
                           "past_key_names": PAST_PREFIX + "%d.key", "past_value_names": PAST_PREFIX + "%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": context,
                   "min_length": 0, "past_present_share_buffer": shares_buffer, "temperature": 1.0, "top_k": 1,
                   "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0, "diversity_penalty": 0.0,
                   "no_repeat_ngram_size": 0, "early_stopping": True},
    }


def byte_level_alphabet() -> list[str]:
    """The printable stand-in of each byte value that byte-level BPE vocabularies use (GPT-2's mapping)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spare = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(spare)) for b in range(256)]


def byte_tokenizer_json() -> dict:
    """A byte-level BPE with one token per byte (id = byte value) and no merges: the reference GPT's vocabulary."""
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": level, "post_processor": None, "decoder": level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {char: b for b, char in enumerate(byte_level_alphabet())}, "merges": []}}


def plain_byte_level(data: dict) -> dict | None:
    """`data` (a tokenizer.json) with a plain ByteLevel decoder, if its decoder is ByteLevel plus SentencePiece steps
    that do nothing on a byte-level vocabulary (no <0xNN> tokens); None when it has nothing of the kind to drop."""
    decoder, model = data.get("decoder") or {}, data.get("model") or {}
    if decoder.get("type") != "Sequence" or model.get("type") != "BPE":
        return None
    steps = decoder.get("decoders") or []
    levels = [d for d in steps if d.get("type") == "ByteLevel"]
    others = {d.get("type") for d in steps if d.get("type") != "ByteLevel"}
    if len(levels) != 1 or not others <= {"ByteFallback", "Fuse", "Replace", "Strip"}:
        return None
    if any(token.startswith("<0x") for token in model.get("vocab") or {}):
        return None
    return {**data, "decoder": levels[0], "model": {**model, "byte_fallback": False}}


def _agree(original: str, adjusted: str, texts: list[str], id_lists: list[list[int]]) -> str | None:
    """Where two tokenizer.json texts disagree (encoding a text or decoding ids), or None."""
    from tokenizers import Tokenizer

    a, b = Tokenizer.from_str(original), Tokenizer.from_str(adjusted)
    for ids in id_lists:
        if a.decode(ids) != b.decode(ids):
            return f"decoding {ids[:8]}..."
        texts = [*texts, a.decode(ids)]
    for text in texts:
        if a.encode(text).ids != b.encode(text).ids:
            return f"encoding {text[:30]!r}"
    return None


def tokenizer_files(bundle: Bundle, golden_ids: list[list[int]]) -> tuple[dict[str, str], str]:
    """(file name -> text) of the tokenizer genai reads, and a note on what was written."""
    spec = bundle.manifest.tokenizer
    kind = spec.get("type")
    config = {"model_max_length": bundle.model.get("max_positions") or 2048, "clean_up_tokenization_spaces": False}
    if spec.get("chat_template"):
        config["chat_template"] = spec["chat_template"]
    if kind == "bytes":
        text = json.dumps(byte_tokenizer_json(), ensure_ascii=False)
        from tokenizers import Tokenizer

        made = Tokenizer.from_str(text)
        for sample in SAMPLE_TEXTS:
            if made.encode(sample).ids != list(sample.encode("utf-8")):
                raise EdgetxError(f"the byte-level tokenizer.json written for genai does not encode {sample!r} as its "
                                  "UTF-8 bytes; this is a bug in edgetx")
        return ({"tokenizer.json": text, "tokenizer_config.json": json.dumps(
            {"tokenizer_class": "GPT2Tokenizer", **config})}, "bytes as a byte-level BPE (id = byte value)")
    if kind != "hf":
        return {}, "none: this bundle has no tokenizer, so apps feed genai token ids"
    original = bundle.file(spec["file"]).read_text()
    data = json.loads(original)
    adjusted, note = plain_byte_level(data), "the bundle's tokenizer.json"
    if adjusted is not None:
        text = json.dumps(adjusted, ensure_ascii=False)
        where = _agree(original, text, list(SAMPLE_TEXTS), golden_ids)
        if where is None:
            original, note = text, "the bundle's tokenizer.json with a plain ByteLevel decoder (same ids and text)"
        else:
            note = f"the bundle's tokenizer.json as it is (a plain ByteLevel decoder would differ on {where})"
    for key in ("bos_token", "eos_token"):
        if spec.get(key):
            config[key] = spec[key]
    return {"tokenizer.json": original, "tokenizer_config.json": json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", **config}, ensure_ascii=False)}, note


def to_genai(bundle: Bundle, variants: list[str] | None = None, threads: int | None = None) -> dict:
    """Write genai_config.json and the tokenizer beside each (or the named) variant's model, after genai's own greedy
    loop on them picked the same tokens as edgetx's Generator; record them (formats["genai"]). Returns, per variant,
    what was checked and written."""
    from edgetx.onnx_info import graph_skeleton
    from edgetx.runtimes.backend import get_backend

    kind = kind_of(bundle)
    if not kind.genai_model_type:
        raise EdgetxError(f"{bundle.path}: onnxruntime-genai runs decoder language models; this bundle is "
                          f"{kind.described_as}")
    if bundle.io.get("components"):
        raise EdgetxError(f"{bundle.path}: edgetx writes genai folders for models of one graph only")
    names = variants or list(bundle.variants)
    for name in names:
        bundle.variant(name)  # an unknown name is refused with the known ones before any work
    backend = get_backend("genai")  # a clear "not provisioned: edgetx provision genai" before any work
    folders: dict[str, str] = {}
    for name in bundle.variants:
        folder = str(Path(bundle.variant(name).file).parent)
        if name in names and folder in folders.values():
            other = next(k for k, v in folders.items() if v == folder)
            raise EdgetxError(f"variants {other!r} and {name!r} share the folder {folder!r}; a genai folder holds one "
                              "model, so convert one of them at a time (--variant)")
        folders[name] = folder
    golden = bundle.golden()
    prompt = golden["prefill.input_ids"]
    texts_ids = [prompt[0].tolist(), [int(t) for t in golden["decode.tokens"]]]
    files, note = tokenizer_files(bundle, texts_ids)
    results, new_files = {}, {}
    tmp_root = Path(tempfile.mkdtemp(prefix=".edgetx-genai-", dir=bundle.path.parent))
    try:
        for name in names:
            variant = bundle.variant(name)
            model, rel = bundle.file(variant.file), Path(variant.file).parent
            graph = graph_skeleton(model)
            shares, graph_note = shares_cache_buffer(graph), "the variant's graph"
            if not shares:  # genai's fast path needs GroupQueryAttention: rewrite MultiHeadAttention where it matches
                with progress.stage(f"{name}: MultiHeadAttention as GroupQueryAttention, checked on the golden I/O"):
                    rewritten, graph_note = gqa_graph(bundle, name)
                if rewritten is not None:
                    for path in (rewritten, data_file(rewritten)):
                        if path.is_file():
                            new_files[(rel / path.name).as_posix()] = path
                    model, graph, shares = rewritten, graph_skeleton(rewritten), True
            stage = tmp_root / name
            stage.mkdir()
            link_or_copy(model, stage / model.name)
            if data_file(model).is_file():
                link_or_copy(data_file(model), stage / data_file(model).name)
            written = {CONFIG: json.dumps(genai_config(bundle, model.name, shares, graph), indent=2), **files}
            for file, text in written.items():
                (stage / file).write_text(text + "\n")
            with progress.stage(f"{name}: genai's greedy loop vs edgetx's Generator ({CHECK_STEPS} tokens)"):
                check = _check_in_genai(bundle, name, backend, stage / CONFIG, prompt, threads, bool(files))
            for file in written:
                new_files[(rel / file).as_posix()] = stage / file
            results[name] = {"config": (rel / CONFIG).as_posix(), "model": (rel / model.name).as_posix(),
                             "graph": graph_note, "past_present_share_buffer": shares, "tokenizer": note, **check}

        def record(manifest: dict) -> None:
            for name, result in results.items():
                manifest["variants"][name].setdefault("formats", {})[GENAI_FORMAT] = result["config"]
            manifest.setdefault("genai", {}).update(results)

        bundle.add_files(new_files, record)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return results


def tokenizer_agreement(texts: list[str], edgetx_ids: list[list[int]], genai_ids: list[list[int]]) -> dict:
    """How genai's tokenizer encodes `texts` against edgetx's: the same, the same but for special tokens edgetx's puts
    in front (onnxruntime-extensions leaves a tokenizer.json's post-processor out), or where it differs."""
    if edgetx_ids == genai_ids:
        return {"tokenizer_agrees": True}
    prefix = edgetx_ids[0][: len(edgetx_ids[0]) - len(genai_ids[0])]
    if prefix and all(want == prefix + got for want, got in zip(edgetx_ids, genai_ids)):
        return {"tokenizer_agrees": False, "prepend_ids": prefix,
                "tokenizer_note": f"genai's tokenizer leaves out the special token ids {prefix} that the bundle's "
                                  "tokenizer puts in front of every text: a genai app prepends them to the prompt"}
    text = next(t for t, want, got in zip(texts, edgetx_ids, genai_ids) if want != got)
    return {"tokenizer_agrees": False, "tokenizer_note": f"genai's tokenizer encodes {text[:40]!r} otherwise than the "
                                                         "bundle's tokenizer: a genai app should feed edgetx's token ids"}


GQA_MODEL = "model.genai.onnx"  # a variant's graph with GroupQueryAttention, beside its model.onnx


def gqa_graph(bundle: Bundle, name: str) -> tuple[Path | None, str]:
    """The variant's graph with its MultiHeadAttention rewritten as GroupQueryAttention (edgetx.passes.mha_gqa), saved
    beside it as model.genai.onnx once every parity check of the model kind passes on it (the variant's tolerance, the
    golden I/O); else (None, why not). The file is unlisted until the caller records it."""
    import dataclasses

    from edgetx.onnx_info import graph_skeleton
    from edgetx.passes.files import transform_file
    from edgetx.passes.mha_gqa import MhaAsGqa
    from edgetx.runtimes.session import Session
    from edgetx.verify.tolerances import tolerance_for

    variant = bundle.variant(name)
    rel = (Path(variant.file).parent / GQA_MODEL).as_posix()
    target = bundle.file(rel)
    [log] = transform_file(bundle.file(variant.file), target, [MhaAsGqa()])
    if not log["modified"] or not shares_cache_buffer(graph_skeleton(target)):
        _remove(target)
        why = log.get("skipped") or "the rewritten graph still reads its past outside the attention"
        return None, f"the variant's graph ({why}), so genai copies the cache each step"
    session = Session(bundle, variant=dataclasses.replace(variant, file=rel, formats={}))
    try:
        checks = session.kind.parity_checks(session, bundle.golden(), tolerance_for(variant.precision, variant.tolerance))
    finally:
        session.close()
    failed = [f"{c.name} ({c.detail})" for c in checks if not c.passed]
    if failed:
        _remove(target)
        return None, f"the variant's graph (with GroupQueryAttention it failed {', '.join(failed)}), so genai copies the cache"
    return target, (f"{GQA_MODEL}: the variant's graph with its {log['attention_nodes']} MultiHeadAttention nodes as "
                    f"GroupQueryAttention (genai's shared KV buffer), passing {len(checks)} parity checks")


def _remove(path: Path) -> None:
    from edgetx.passes.files import data_file

    path.unlink(missing_ok=True)
    data_file(path).unlink(missing_ok=True)


def _check_in_genai(bundle: Bundle, name: str, backend, config: Path, prompt: np.ndarray, threads: int | None,
                    has_tokenizer: bool) -> dict:
    """genai's own loop and edgetx's Generator (ort-cpu) on the same variant and prompt: the same greedy tokens; and
    how genai's tokenizer encodes texts against the bundle's."""
    from edgetx.runtimes.backend import SessionOptions
    from edgetx.runtimes.session import Session

    session = Session(bundle, variant=name, threads=threads)
    want = greedy(session.run, session.inputs, prompt, CHECK_STEPS - 1)[0]
    texts = [*SAMPLE_TEXTS, session.tokenizer.decode(prompt[0].tolist())] if has_tokenizer else []
    edgetx_ids = [list(session.tokenizer.encode(t)) for t in texts]
    session.close()
    genai = backend.create_session(config, SessionOptions(threads=threads))
    try:
        got = genai.own_loop(prompt[0], CHECK_STEPS).tokens
        runtime = genai.runtime
        agreement = tokenizer_agreement(texts, edgetx_ids, genai.encode(texts)) if texts else {}
    finally:
        genai.close()
    if got != want:
        first = next(i for i, (a, b) in enumerate(zip(want, got)) if a != b)
        raise EdgetxError(f"{name}: onnxruntime-genai's greedy loop on the converted folder picks token {got[first]} "
                          f"at step {first} where edgetx's Generator picks {want[first]} (tokens agree for {first} of "
                          f"{CHECK_STEPS}); nothing was written. genai feeds the graph its own mask and positions: "
                          "a graph that reads them otherwise than edgetx's contract cannot run there")
    return {"greedy_tokens": [len(got), CHECK_STEPS], "checked_with": runtime, **agreement}
