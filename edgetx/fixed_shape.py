"""Fixed-shape copies of a bundle's variants, for backends that cannot take dynamic shapes
(NNAPI, CoreML, QNN's HTP, XNNPACK): every symbolic dim (batch, seq, past, and sums such as
"past+seq") is set with onnxruntime.tools' `make_dim_param_fixed`.

A fixed copy is checked against its own dynamic variant on the same inputs (built from the
bundle's golden text at exactly those shapes; a decoder's past comes from running the dynamic
variant on the preceding tokens). fp32 copies must agree within the bundle's fp32 budget. Quantized
copies are held to their variant's tolerance (KL of logits, or cosine of hidden states): with shapes
known, onnxruntime picks other int8 kernels (measured on MiniLM int8: cosine 0.9936 vs the dynamic
graph, while with graph optimizations off the two are identical).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgetx import metrics
from edgetx.bundle import Bundle
from edgetx.errors import EdgetxError, InputError
from edgetx.runtimes.feeds import causal_feeds, empty_cache, next_cache
from edgetx.runtimes.session import Session, _dim_value

FIXED_FORMAT = "onnx-fixed"


def symbols(io: dict) -> list[str]:
    """The plain symbolic dims of a bundle's inputs (e.g. batch, seq, past), in order of appearance."""
    names = [d for spec in io["inputs"] for d in spec["shape"] if isinstance(d, str) and "+" not in d]
    return list(dict.fromkeys(names))


def parse_dims(text: str, io: dict) -> dict[str, int]:
    """"batch=1,seq=64" -> {"batch": 1, "seq": 64}; every symbol of the model must be given."""
    dims: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if not value.strip().isdigit():
            raise InputError(f"--fixed-shape: {part!r} is not NAME=INTEGER (e.g. batch=1,seq=64)")
        dims[name.strip()] = int(value)
    wanted = symbols(io)
    unknown, missing = sorted(set(dims) - set(wanted)), [s for s in wanted if s not in dims]
    if unknown or missing:
        raise InputError(f"--fixed-shape must set each of this model's dims {', '.join(wanted)}"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                         + (f"; missing: {', '.join(missing)}" if missing else ""))
    if dims.get("batch", 1) < 1 or dims.get("seq", 1) < 1:
        raise InputError("--fixed-shape: batch and seq must be at least 1")
    return dims


def fix_model(source: Path, target: Path, dims: dict[str, int], io: dict, transform=None) -> None:
    """Write `source` with every symbolic dim (and sum of them) replaced by its value (and, if given,
    `transform(model)` applied in place: e.g. edgetx.remedies.finite_masks)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    model = onnx.load(str(source))
    _freeze_optional_inputs(model.graph, io)
    params = {d for spec in io["inputs"] + io["outputs"] for d in spec["shape"] if isinstance(d, str)}
    for param in sorted(params):
        value = _dim_value(param, dims)
        if value is None:
            raise EdgetxError(f"cannot give {param!r} a value from {dims}")
        make_dim_param_fixed(model.graph, param, value)
    _sort_nodes(model.graph)  # onnx's checker (run by fix_output_shapes) wants a topological order
    del model.graph.value_info[:]  # optional; stale entries (float16 conversion leaves some) fail inference
    try:
        fix_output_shapes(model)
    except Exception as e:  # onnx raises ValidationError / InferenceError for graphs it cannot type
        raise EdgetxError(f"{source}: cannot infer the output shapes at {dims}: "
                          f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
    if transform is not None:
        transform(model)
    onnx.save(model, str(target))


def _freeze_optional_inputs(graph, io: dict) -> None:
    """Optional inputs (e.g. logits_to_keep) become constants at their default: a fixed-shape graph
    is for one input signature, and a Slice driven by an input would leave its output shape unknown."""
    optional = {spec["name"] for spec in io["inputs"] if spec.get("optional")}
    initializers = {t.name for t in graph.initializer}
    kept = [i for i in graph.input if i.name not in optional or i.name not in initializers]
    del graph.input[:]
    graph.input.extend(kept)


def _sort_nodes(graph) -> None:
    """Order `graph`'s nodes so that each comes after the producers of its inputs (float16 conversion
    appends Cast nodes at the end of the list; onnxruntime does not mind, onnx's checker does)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(range(len(graph.node))), []
    while pending:
        ready = [i for i in pending if all(name in available for name in graph.node[i].input)]
        if not ready:  # a cycle or an input nobody produces: leave the order as it was
            return
        for i in ready:
            available.update(graph.node[i].output)
        ordered += ready
        taken = set(ready)
        pending = [i for i in pending if i not in taken]
    nodes = [graph.node[i] for i in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


def fixed_feeds(bundle: Bundle, dynamic: Session, dims: dict[str, int]) -> dict[str, np.ndarray]:
    """Inputs of exactly `dims`, from the bundle's golden text."""
    golden = bundle.golden()
    kind = bundle.model.get("kind")
    batch, seq = dims["batch"], dims["seq"]
    if kind == "encoder":
        real = golden["batch.input_ids"][golden["batch.attention_mask"].astype(bool)]
        ids = np.resize(real, (batch, seq)).astype(np.int64)
        values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return {s["name"]: values[s["name"]] for s in dynamic.inputs}
    past = dims.get("past", 0)
    tokens = np.resize(golden["prefill.input_ids"][0], past + seq)
    rows = np.tile(tokens, (batch, 1)).astype(np.int64)
    cache = empty_cache(dynamic.inputs, batch)
    if past:
        cache = next_cache(dynamic.run(causal_feeds(dynamic.inputs, rows[:, :past])), cache)
    return causal_feeds(dynamic.inputs, rows[:, past:], cache=cache)


def add_fixed(bundle: Bundle, dims: dict[str, int], variants: list[str] | None = None, transform=None,
              transform_name: str = "") -> dict[str, dict]:
    """Write `VARIANT/model.fixed.onnx` for each (or the named) variant, check it against the dynamic
    variant on ort-cpu, and record it (format "onnx-fixed" and its dims) in the manifest. `transform`
    (named `transform_name` in the manifest) is applied to each fixed copy before the check."""
    from edgetx.runtimes.base import SessionOptions, get_backend
    from edgetx.tolerances import tolerance_for

    results, new_files = {}, {}
    with tempfile.TemporaryDirectory(prefix=".edgetx-fixed-", dir=bundle.path.parent) as tmp:
        for name in variants or list(bundle.variants):
            variant = bundle.variant(name)
            staged = Path(tmp) / name / "model.fixed.onnx"
            staged.parent.mkdir(parents=True)
            fix_model(bundle.file(variant.file), staged, dims, bundle.io, transform)
            dynamic = Session(bundle, variant=name, verify_hashes=False)
            feeds = fixed_feeds(bundle, dynamic, dims)
            want = dynamic.run(feeds)
            fixed = get_backend("ort-cpu").create_session(staged, SessionOptions())
            got = fixed.run(feeds).outputs
            diff = max(metrics.max_abs(want[k], got[k]) for k in want)
            tolerance = tolerance_for(variant.precision, bundle.manifest["variants"][name].get("tolerance"))
            ok, detail = _agrees(bundle.model.get("kind"), tolerance, want, got, diff)
            if not ok:
                raise EdgetxError(f"{name}: the fixed-shape copy does not agree with the dynamic variant at {dims} "
                                  f"({detail}); not added")
            rel = str(Path(variant.file).with_name("model.fixed.onnx").as_posix())
            new_files[rel] = staged
            results[name] = {"file": rel, "max_abs_vs_dynamic": diff, "check": detail}

        def record(manifest: dict) -> None:
            for name, result in results.items():
                entry = manifest["variants"][name]
                entry.setdefault("formats", {})[FIXED_FORMAT] = result["file"]
                entry["fixed_shape"] = {"dims": dims, "max_abs_vs_dynamic": result["max_abs_vs_dynamic"],
                                        "check": result["check"], **({"transform": transform_name} if transform_name else {})}

        bundle.add_files(new_files, record)
    return results


def _agrees(kind: str, tolerance, want: dict, got: dict, diff: float) -> tuple[bool, str]:
    """Fixed vs dynamic outputs under the variant's tolerance; (passed, what was measured)."""
    if tolerance.max_kld is None:
        return diff <= tolerance.max_abs, f"max |diff| {diff:.2e} (<= {tolerance.max_abs:.2e})"
    if kind == "causal-lm":
        ok, _, detail = tolerance.compare_logits(want["logits"], got["logits"])
        return ok, detail
    hidden_want, hidden_got = want["last_hidden_state"], got["last_hidden_state"]
    cosine = float(metrics.cosine(hidden_want.reshape(-1, hidden_want.shape[-1]),
                                  hidden_got.reshape(-1, hidden_got.shape[-1])).min())
    return cosine >= tolerance.min_cosine, f"token cosine min {cosine:.4f} (>= {tolerance.min_cosine:g})"
