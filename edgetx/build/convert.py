"""`convert`: other serializations of a bundle's variants, each checked before it is recorded.

- `.ort` files: onnxruntime's flatbuffer format, loaded by its mobile packages and reduced-operator
  builds (onnxruntime.tools.convert_onnx_models_to_ort, "Fixed" optimization style, so the file is
  already optimized and needs no optimizer on the device);
- `required_operators.config`: the operator kernels all variants need, the input of an onnxruntime
  reduced build (`--include_ops_by_config`);
- a usability report per variant: how much of the graph NNAPI and CoreML could take, as dynamic
  shapes are and if they were fixed (onnxruntime.tools.mobile_helpers.usability_checker);
- fixed-shape copies (`model.fixed.onnx`; each graph's, `{graph}.fixed.onnx`, for a model of several graphs),
  for backends that cannot take dynamic shapes (NNAPI, CoreML, QNN's HTP, XNNPACK), bias-less Gemms written as
  MatMuls (edgetx.passes.gemm_matmul), each checked against its own dynamic graph on the same inputs (built from
  the golden data at exactly those shapes). fp32 copies must agree within the bundle's fp32 budget; quantized
  copies are held to their variant's tolerance: with shapes known, onnxruntime picks other int8 kernels
  (measured on MiniLM int8: cosine 0.9936 vs the dynamic graph; with graph optimizations off, identical).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgetx import progress
from edgetx.bundle import Bundle
from edgetx.errors import EdgetxError, InputError
from edgetx.runtimes.session import Session
from edgetx.verify.fixed import compare_runs, fixed_feeds
from edgetx.runtimes.backend import FIXED_FORMAT, REFERENCE_BACKEND

if TYPE_CHECKING:
    from edgetx.passes import GraphPass

REQUIRED_OPERATORS = "mobile/required_operators.config"
USABILITY_EPS = {"NNAPI": "nnapi", "CoreML NeuralNetwork": "coreml_supported_neuralnetwork_ops.md",
                 "CoreML MLProgram": "coreml_supported_mlprogram_ops.md"}


def _one_graph_only(bundle: Bundle, what: str) -> None:
    """Conversions are per ONNX file and their checks per graph: refuse a model of several graphs, in one line."""
    from edgetx.kinds import kind_of

    components = bundle.io.get("components") or {}
    if components:
        graphs = ", ".join([kind_of(bundle).main_graph, *components])
        raise EdgetxError(f"{bundle.path}: edgetx does not make {what} of a model of several graphs yet (this "
                          f"{bundle.model.get('kind')} bundle has {graphs} graphs); its "
                          "variants run as they are on onnx backends (ort-cpu, arm64, web)")


def to_ort(bundle: Bundle, variants: list[str] | None = None) -> dict:
    """Add a `.ort` file beside each (or the named) variant's ONNX file and the bundle's
    required-operators config; record them in the manifest. Returns what was added."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from edgetx.passes.files import data_file

    _one_graph_only(bundle, "the ORT format")
    names, too_large = _fit_ort(bundle, variants or list(bundle.variants))
    if not names:
        bundle.update_manifest("mobile", {**bundle.manifest.mobile, "ort_skipped": too_large})
        return {"ort": {}, "skipped": too_large}
    with tempfile.TemporaryDirectory(prefix=".edgetx-ort-", dir=bundle.path.parent) as tmp:
        staging, out = Path(tmp) / "onnx", Path(tmp) / "ort"
        for name in names:  # one folder per variant, the ONNX file linked (not copied) where possible
            source = bundle.file(bundle.variant(name).file)
            (staging / name).mkdir(parents=True)
            link_or_copy(source, staging / name / "model.onnx")
            if data_file(source).is_file():  # a variant under 2 GB may still keep its weights beside it
                link_or_copy(data_file(source), staging / name / data_file(source).name)
        quiet = io.StringIO()
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                convert_onnx_models_to_ort(staging, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
        except Exception as e:  # onnxruntime raises its own types; keep its last lines as the reason
            detail = " | ".join(quiet.getvalue().strip().splitlines()[-3:])
            raise EdgetxError(f"onnxruntime could not convert {bundle.path} to the ORT format: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:300]} {detail}".strip()) from None
        config = next(out.glob("*.config"), None)
        if config is None:
            raise EdgetxError(f"the ORT conversion of {bundle.path} wrote no required-operators config")
        _name_sources(config, out, {name: bundle.variant(name).file for name in names})
        new_files, formats = {REQUIRED_OPERATORS: config}, {}
        for name in names:
            converted = out / name / "model.ort"
            rel = str(Path(bundle.variant(name).file).with_suffix(".ort").as_posix())
            new_files[rel] = converted
            formats[name] = rel

        def record(manifest: dict) -> None:
            for name, rel in formats.items():
                manifest["variants"][name].setdefault("formats", {})["ort"] = rel
            mobile = manifest.setdefault("mobile", {})
            mobile.update({"required_operators": REQUIRED_OPERATORS, "ort_optimization_style": "Fixed"})
            if too_large:
                mobile["ort_skipped"] = too_large

        bundle.add_files(new_files, record)
    return {"ort": formats, "required_operators": REQUIRED_OPERATORS, **({"skipped": too_large} if too_large else {})}


ORT_FORMAT_LIMIT = 2**31  # the ORT format is one flatbuffer: offsets are 32-bit, the weights are inside it


def _fit_ort(bundle: Bundle, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The variants that can be written in the ORT format, and a one-line reason for each that cannot."""
    from edgetx.passes.files import data_file, file_bytes

    fit, skipped = [], {}
    for name in names:
        path = bundle.file(bundle.variant(name).file)
        if data_file(path).is_file() and file_bytes(path) >= ORT_FORMAT_LIMIT - 2**24:
            skipped[name] = (f"not converted: the ORT format is one flatbuffer limited to 2 GB and this variant's "
                             f"weights are {file_bytes(path) / 1e9:.1f} GB")
            progress.log.warning("%s: %s", name, skipped[name])
        else:
            fit.append(name)
    return fit, skipped


def _name_sources(config: Path, out: Path, files: dict[str, str]) -> None:
    """Replace the temporary paths in the config's header comment with the variants' bundle paths."""
    text = config.read_text()
    for name, rel in files.items():
        text = text.replace(str((out / name / "model.ort").resolve()), str(Path(rel).with_suffix(".ort").as_posix()))
    config.write_text(text)


def link_or_copy(source: Path, target: Path) -> None:
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)


def usability(model_path: Path) -> dict:
    """How well NNAPI and CoreML could run this model: nodes each EP supports, partitions, unsupported
    ops, and the usability checker's verdict with the shapes as they are and if they were fixed."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    checkers = {"NNAPI": uc.check_nnapi_partitions,
                "CoreML NeuralNetwork": lambda m, f: uc.check_coreml_partitions(m, f, USABILITY_EPS["CoreML NeuralNetwork"]),
                "CoreML MLProgram": lambda m, f: uc.check_coreml_partitions(m, f, USABILITY_EPS["CoreML MLProgram"])}
    logging.getLogger("usability_checker").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="edgetx-usability-") as tmp:
        optimized = Path(tmp) / "model.onnx"  # as on a device: basic optimizations first
        optimize_model(Path(model_path), optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        dynamic_inputs, _ = uc.check_shapes(model.graph)
        report = {"dynamic_inputs": sorted(i.name for i in dynamic_inputs or []), "eps": {}}
        for ep, check in checkers.items():
            as_is, fixed = check(model, True), check(model, False)
            report["eps"][ep] = {
                "nodes": as_is.num_nodes, "supported_nodes": as_is.num_supported_nodes,
                "partitions": as_is.num_partitions, "verdict": as_is.suitability().name,
                "supported_nodes_if_fixed": fixed.num_supported_nodes, "partitions_if_fixed": fixed.num_partitions,
                "verdict_if_fixed": fixed.suitability().name,
                "unsupported_ops": sorted(fixed.unsupported_ops)}
    return report


def mobile_report(bundle: Bundle, variants: list[str] | None = None) -> dict[str, dict]:
    """Run the usability check on each (or the named) variant and store it in the manifest."""
    from edgetx.passes.files import data_file

    reports = {}
    for name in variants or list(bundle.variants):
        if data_file(bundle.file(bundle.variant(name).file)).is_file():
            reports[name] = {"skipped": "weights in an external data file: NNAPI and CoreML models are limited to 2 GB"}
            continue
        try:
            reports[name] = usability(bundle.file(bundle.variant(name).file))
        except Exception as e:  # the checker needs shape inference to pass; say so per variant
            reports[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    mobile = dict(bundle.manifest.mobile)
    mobile["usability"] = {**mobile.get("usability", {}), **reports}
    bundle.update_manifest("mobile", mobile)
    return reports


# --- fixed-shape copies (`edgetx convert --to fixed`) ----------------------------------------------

def graph_io(io: dict) -> dict[str | None, dict]:
    """Each graph's own io block: the main graph's (None) and each of io.components'."""
    return {None: io, **(io.get("components") or {})}


def symbols(io: dict) -> list[str]:
    """The plain symbolic dims of a bundle's inputs, over all its graphs (e.g. batch, seq, past), in order."""
    names = [d for graph in graph_io(io).values() for spec in graph["inputs"] for d in spec["shape"]
             if isinstance(d, str) and "+" not in d]
    return list(dict.fromkeys(names))


def parse_dims(text: str, io: dict) -> dict[str, int]:
    """"batch=1,seq=64" -> {"batch": 1, "seq": 64}; every symbol of the model must be given."""
    dims: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if not value.strip().isdigit():
            raise InputError(f"--shape: {part!r} is not NAME=INTEGER (e.g. batch=1,seq=64)")
        dims[name.strip()] = int(value)
    wanted = symbols(io)
    unknown, missing = sorted(set(dims) - set(wanted)), [s for s in wanted if s not in dims]
    if unknown or missing:
        raise InputError(f"--shape must set each of this model's dims {', '.join(wanted)}"
                         + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                         + (f"; missing: {', '.join(missing)}" if missing else ""))
    if dims.get("batch", 1) < 1 or dims.get("seq", 1) < 1:
        raise InputError("--shape: batch and seq must be at least 1")
    return dims



def add_fixed(bundle: Bundle, dims: dict[str, int], variants: list[str] | None = None,
              transform: GraphPass | None = None, transform_name: str = "") -> dict[str, dict]:
    """Write a fixed-shape copy of each graph of each (or the named) variant (`VARIANT/model.fixed.onnx`, and
    `VARIANT/{graph}.fixed.onnx` for a model of several graphs), check each against its dynamic graph on ort-cpu,
    and record them (format "onnx-fixed" and the dims) in the manifest. `transform`, a pass (named
    `transform_name` in the manifest), is applied to each fixed copy before the check."""
    results, new_files = {}, {}
    with tempfile.TemporaryDirectory(prefix=".edgetx-fixed-", dir=bundle.path.parent) as tmp:
        for name in variants or list(bundle.variants):
            variant = bundle.variant(name)
            dynamic = Session(bundle, variant=name, verify_hashes=False)
            graphs = {}
            for graph, io in graph_io(bundle.io).items():
                session = dynamic if graph is None else dynamic.component(graph)
                graphs[graph] = _fixed_copy(bundle, variant, session, graph, io, dims, Path(tmp) / name,
                                            transform, new_files)
            dynamic.close()
            main = graphs.pop(None)
            results[name] = {**main, **({"components": graphs} if graphs else {})}

        def record(manifest: dict) -> None:
            for name, result in results.items():
                entry = manifest["variants"][name]
                entry.setdefault("formats", {})[FIXED_FORMAT] = result["file"]
                others = result.get("components") or {}
                for graph, copy in others.items():
                    entry.setdefault("component_formats", {}).setdefault(graph, {})[FIXED_FORMAT] = copy["file"]
                checks = [result["check"], *(f"{graph}: {copy['check']}" for graph, copy in others.items())]
                worst = max(copy["max_abs_vs_dynamic"] for copy in [result, *others.values()])
                entry["fixed_shape"] = {"dims": dims, "max_abs_vs_dynamic": worst, "check": "; ".join(checks),
                                        **({"transform": transform_name} if transform_name else {})}

        bundle.add_files(new_files, record)
    return results


def _fixed_copy(bundle: Bundle, variant, dynamic: Session, graph: str | None, io: dict, dims: dict[str, int],
                folder: Path, transform: GraphPass | None, new_files: dict) -> dict:
    """One graph's fixed-shape copy, staged in `folder` and checked against its dynamic graph on the same inputs
    (the kind makes them from the golden data at `dims`); its files are added to `new_files`."""
    from edgetx.passes.files import data_file, transform_file
    from edgetx.passes.fixed_dims import FixDims
    from edgetx.passes.gemm_matmul import GemmToMatMul
    from edgetx.runtimes.backend import SessionOptions, get_backend
    from edgetx.verify.tolerances import tolerance_for

    feeds = fixed_feeds(bundle, dynamic, dims)  # first: a kind that cannot make fixed inputs says so before any work
    source = variant.component_file(graph)
    staged = folder / Path(source).with_suffix(".fixed.onnx").name
    staged.parent.mkdir(parents=True, exist_ok=True)
    passes = [FixDims(dims, io), GemmToMatMul()] + ([transform] if transform else [])
    transform_file(bundle.file(source), staged, passes)
    want = dynamic.run(feeds)
    fixed = get_backend(REFERENCE_BACKEND).create_session(staged, SessionOptions())
    got = fixed.run(feeds).outputs
    fixed.close()
    tolerance = tolerance_for(variant.precision, variant.tolerance)
    ok, diff, detail = compare_runs(dynamic.kind, tolerance, want, got)
    what = f"{variant.name}" + (f" ({graph} graph)" if graph else "")
    if not ok:
        raise EdgetxError(f"{what}: the fixed-shape copy does not agree with the dynamic graph at {dims} "
                          f"({detail}); not added")
    rel = str(Path(source).with_name(staged.name).as_posix())
    new_files[rel] = staged
    if data_file(staged).is_file():  # its own weights, beside it (location *.fixed.onnx.data)
        new_files[rel + ".data"] = data_file(staged)
    return {"file": rel, "max_abs_vs_dynamic": diff, "check": detail}

