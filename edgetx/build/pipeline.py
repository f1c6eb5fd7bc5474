"""`build`: a trained model in, a verified bundle out. Each stage and the module that does it:

1. load the model: `edgetx.exporters.source.load_source` picks the exporter family (exporters/);
2. export the fp32 ONNX graph with torch.onnx (dynamo), and capture the golden I/O from PyTorch — what the
   model kind (edgetx.kinds) checks later;
3. measure the fp32 tolerance: `edgetx.verify.parity.measure_fp32_tolerance`;
4. optimize: `edgetx.build.select.select_graph` builds graph candidates from `edgetx.passes`, verifies each
   and keeps the fastest that passes;
5. the kind's own graph edits (`ModelKind.graph_passes`: a causal LM's logits_to_keep input);
6. verify the kept graph against the golden I/O (`edgetx.verify.parity.verify`);
7. quantized variants, each behind its gate: `edgetx.quant.gates.quantize_gated` (schemes in
   edgetx.quant.schemes, applied by edgetx.quant.apply), then verified like fp32;
8. write: `edgetx.bundle.BundleWriter.commit` hashes every file, checks the manifest against its schema
   (edgetx/bundle/manifest.schema.json) and renames the folder into place.
Nothing is written at the target unless every stage succeeds. Progress goes through edgetx.progress.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import platform
import resource
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from edgetx import __version__, progress
from edgetx.bundle import Bundle, BundleWriter
from edgetx.errors import EdgetxError
from edgetx.kinds import ModelKind, get_kind
from edgetx.runtimes.backend import REFERENCE_BACKEND

OPSET = 18

# A stage reporter: called as a context manager around each stage with its title.
StageReporter = Callable[[str], AbstractContextManager[None]]


def _require_export_extra() -> None:
    missing = []
    for module in ("torch", "onnx", "onnxscript", "safetensors"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise EdgetxError(f"building a bundle needs {', '.join(missing)}: pip install 'edgetx[export]'")


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    return {"edgetx": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}


def _export_failed(source, out: str | Path, error: Exception) -> EdgetxError:
    log = Path(f"{Path(out).absolute()}.export-error.log")
    log.write_text("".join(traceback.format_exception(error)))
    root = error
    while root.__cause__ is not None:  # torch.onnx wraps the torch.export error that says what broke
        root = root.__cause__
    first_line = (str(root).strip().splitlines() or [""])[0]
    architecture = source.model.get("architecture", source.name)
    return EdgetxError(f"torch.onnx could not export {architecture} ({source.kind}): {type(root).__name__}: "
                       f"{first_line[:300]}\nThe full trace is in {log}. {source.export_hint}")


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class BuildRecord:
    """Wall time per stage and the process's peak RSS, for the manifest's provenance.build."""

    def __init__(self, stage: StageReporter):
        self._stage, self.stages, self.started = stage, [], time.perf_counter()
        self.weight_bytes = 0

    @contextlib.contextmanager
    def stage(self, title: str) -> Iterator[None]:
        started = time.perf_counter()
        with self._stage(title):
            yield
        self.stages.append({"stage": title, "seconds": round(time.perf_counter() - started, 1),
                            "peak_rss_bytes": peak_rss_bytes()})

    def to_dict(self) -> dict:
        peak = peak_rss_bytes()
        return {"seconds": round(time.perf_counter() - self.started, 1), "peak_rss_bytes": peak,
                "fp32_weight_bytes": self.weight_bytes,
                "peak_rss_vs_fp32_weights": round(peak / self.weight_bytes, 2) if self.weight_bytes else None,
                "stages": self.stages}


def _release_rewriter_matches() -> None:
    """onnxscript's pattern matchers (module-level rewrite rules that torch.onnx runs on the exported graph)
    keep the last graph and match they saw; that graph's initializers wrap the PyTorch parameters, so the
    whole model stays alive after the exporter has returned (measured: every parameter of a Qwen2 still
    referenced from SimplePatternMatcher._graph after the build dropped the model). Forget them."""
    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:  # another onnxscript layout: nothing known to clear
        return
    for obj in gc.get_objects():
        if isinstance(obj, SimplePatternMatcher):
            for attr in ("_graph", "_match", "_current_node", "_tracer"):
                if hasattr(obj, attr):
                    setattr(obj, attr, None)


def _release_torch(source) -> None:
    """Drop the PyTorch model once the graph and the golden I/O exist: the rest of the build runs on ONNX
    files, and a large model must not stay in memory beside its onnxruntime sessions."""
    source.module = source.run_torch = None
    source.export = source.capture_golden = None  # their closures hold the model too
    _release_rewriter_matches()
    gc.collect()


def _optimize_fp32(provisional: Bundle, writer: BundleWriter, kind: ModelKind,
                   candidates: tuple[str, ...] | None = None) -> dict:
    """Select the fp32 graph by measurement and put the winner's graphs at fp32/ (each with its data file, if
    any: each candidate is written as its own self-contained files under candidates/NAME/)."""
    from edgetx.build.select import CANDIDATES, select_graph
    from edgetx.passes.files import move, save

    def write(name: str, model, graph: str = kind.main_graph) -> str:
        rel = f"candidates/{name}/{graph}.onnx"
        save(model, writer.path(rel))
        return rel

    unknown = sorted(set(candidates or ()) - set(CANDIDATES))
    if unknown:
        raise EdgetxError(f"unknown optimization candidates {', '.join(unknown)}; known: {', '.join(CANDIDATES)}")
    chosen = {n: CANDIDATES[n] for n in candidates} if candidates else None
    fp32 = kind.graph_files("fp32")
    selection = select_graph(provisional, fp32[kind.main_graph], write, target=REFERENCE_BACKEND, candidates=chosen)
    winner = next(c for c in selection.candidates if c["kept"])
    move(writer.path(winner["file"]), writer.path(fp32[kind.main_graph]))
    for graph, rel in (winner.get("components") or {}).items():
        move(writer.path(rel), writer.path(fp32[graph]))
    shutil.rmtree(writer.path("candidates/x").parent, ignore_errors=True)
    for candidate in selection.candidates:
        candidate.pop("file", None)
        candidate.pop("components", None)
    return selection.to_dict()


def _quantize_variants(provisional: Bundle, writer: BundleWriter, manifest: dict, source, kind: ModelKind, schemes,
                       stage) -> None:
    """Add a gated variant per scheme; record every attempt (passed or not) in the manifest."""
    from edgetx.quant.gates import quantize_gated, quantize_gated_graphs
    from edgetx.quant.schemes import NotApplicable, scheme
    from edgetx.runtimes.session import Session
    from edgetx.verify.parity import verify
    from edgetx.verify.tolerances import QUANTIZED

    data = source.quant_data()
    writer.save_arrays("quant.npz", data)
    record = manifest["quantization"] = {"data": "quant.npz", "results": {}}
    fp32 = kind.graph_files("fp32")
    for name in schemes:
        s = scheme(name)
        gate = QUANTIZED[s.precision]
        files = kind.graph_files(name)
        with stage(f"quantize {name} and check its gate ({kind.tolerance_label(gate.to_dict())})"):
            try:
                if kind.components:
                    result = quantize_gated_graphs(s, {g: writer.path(rel) for g, rel in fp32.items()},
                                                   {g: writer.path(rel) for g, rel in files.items()}, kind,
                                                   manifest["io"], data, manifest["model"])
                else:
                    result = quantize_gated(s, writer.path(fp32[kind.main_graph]), writer.path(files[kind.main_graph]),
                                            kind, manifest["io"]["inputs"], data, manifest["model"])
            except NotApplicable as e:
                record["results"][name] = {"scheme": s.to_dict(), "not_applicable": str(e)}
                _drop_if_empty(writer.path(files[kind.main_graph]).parent)
                continue
        record["results"][name] = result.to_dict()
        if not result.passed:
            _drop_if_empty(writer.path(files[kind.main_graph]).parent)  # a missed scheme leaves no folder behind
            continue
        manifest["variants"][name] = provisional.manifest["variants"][name] = {
            "precision": s.precision, **_variant_files(kind, name), "scheme": name, "tolerance": gate.to_dict()}
        with stage(f"verify {name} against the golden I/O and time it"):
            (report,) = verify(provisional, backend=REFERENCE_BACKEND, variants=[name])
            if report.passed:
                manifest["variants"][name]["parity"] = report.to_dict()
                session = Session(provisional, variant=name, backend=REFERENCE_BACKEND)
                record["results"][name]["latency"] = kind.time_graph(session, provisional.golden())
                session.close()  # before the next scheme quantizes: one model's weights in memory at a time
                del session
                gc.collect()
        if not report.passed:  # passed the gate against fp32 but not against PyTorch's golden answers: do not ship it
            record["results"][name]["rejected_by_parity"] = [f"{c.name}: {c.detail}" for c in report.checks if not c.passed]
            manifest["variants"].pop(name, None)
            provisional.manifest["variants"].pop(name, None)
            shutil.rmtree(writer.path(f"{name}/x").parent, ignore_errors=True)


def _drop_if_empty(folder: Path) -> None:
    """Remove a variant's folder that nothing was written to (its scheme missed or did not apply)."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _variant_files(kind: ModelKind, variant: str) -> dict:
    """A variant's manifest entries naming its files: `file` (the main graph) and, for a model of several
    graphs, `components`."""
    files = kind.graph_files(variant)
    main = files.pop(kind.main_graph)
    return {"file": main, **({"components": files} if files else {})}


def build(model: str | Path | Any | None, out: str | Path, *, force: bool = False, allow_pickle: bool = False,
          trust_remote_code: bool = False, optimize: bool = True, quantize: tuple[str, ...] | None = None,
          formats: tuple[str, ...] = (), stage: StageReporter = progress.stage,
          candidates: tuple[str, ...] | None = None) -> Bundle:
    """Build a bundle for `model` at `out`: a model folder or file (None = the reference checkpoint), or an
    `edgetx.exporters.source.ExportSource` made by the caller (any model kind that is registered).

    `allow_pickle` permits pickle weight files (loaded with weights_only=True);
    `trust_remote_code` lets transformers run a model folder's own Python code.
    `optimize` builds fused candidates of the fp32 graph and keeps the fastest that passes parity.
    `quantize` names the schemes to add as variants (None = the default for the model kind);
    each is written only if it passes its gate. `formats` ("ort") adds other serializations after the
    bundle is in place, each verified on its backend (a failure leaves the bundle without them).
    `candidates` names the optimization candidates to try (None = all of edgetx.build.select.CANDIDATES).
    The manifest's provenance.build records wall time per stage and the process's peak RSS against the
    fp32 weight bytes.
    """
    _require_export_extra()
    from edgetx.exporters.source import ExportSource, load_source
    from edgetx.verify.parity import measure_fp32_tolerance, verify
    from edgetx.passes.files import file_bytes, transform_file

    record = BuildRecord(stage)
    stage = record.stage
    with BundleWriter(out, overwrite=force) as writer:
        with stage("load model"):
            source = model if isinstance(model, ExportSource) else \
                load_source(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
            kind = get_kind(source.kind, f"the exporter of {source.name}")
        fp32 = _variant_files(kind, "fp32")
        with stage("export fp32 ONNX (torch.onnx, dynamo)"):
            started = time.perf_counter()
            try:  # a model of several graphs writes the others beside the main one, each <component>.onnx
                source.export(writer.path(fp32["file"]), OPSET)
            except Exception as e:  # dynamo's errors are long; keep them in a log, say what failed
                raise _export_failed(source, out, e) from None
            export_seconds = time.perf_counter() - started
            record.weight_bytes = sum(file_bytes(writer.path(rel)) for rel in kind.graph_files("fp32").values())
        with stage("capture golden I/O from PyTorch on held-out text"):
            golden, golden_info = source.capture_golden()
            writer.save_arrays("golden.npz", golden)
        if not isinstance(model, ExportSource):  # we loaded it: nothing else needs the PyTorch model now
            _release_torch(source)
        for rel, src in source.extra_files.items():
            if isinstance(src, bytes):
                writer.path(rel).write_bytes(src)
            else:
                shutil.copyfile(src, writer.path(rel))

        manifest = {
            "format": "edgetx-bundle",
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": source.model,
            "tokenizer": source.tokenizer,
            **({"preprocessor": source.preprocessor} if source.preprocessor else {}),
            "io": source.io,
            "variants": {"fp32": {"precision": "fp32", **fp32}},
            "golden": {"file": "golden.npz", **golden_info,
                       "arrays": {k: list(v.shape) for k, v in golden.items()}},
            "provenance": {"source": source.source, "source_sha256": source.source_sha256,
                           "exporter": "torch.onnx.export(dynamo=True)", "opset": OPSET,
                           "export_seconds": round(export_seconds, 1), "export_notes": source.notes,
                           "versions": _versions()},
        }
        with stage("measure the fp32 tolerance (PyTorch vs onnxruntime CPU configurations)"):
            provisional = Bundle(writer.tmp, {**manifest, "files": {}})
            tolerance = measure_fp32_tolerance(provisional)
            manifest["variants"]["fp32"]["tolerance"] = tolerance.to_dict()
            padding = kind.padding_effect(golden, tolerance)
            if padding is not None:  # the provisional bundle shares the model block: its checks see it too
                manifest["model"]["padding"] = padding
                if not padding["invariant"]:
                    source.notes.append(f"PyTorch's own answer for a row moves by {padding['max_abs']:.2g} inside a "
                                        "padded batch (positions or mixing that ignore the attention mask): each "
                                        "row is checked alone, and the runtime runs rows one at a time")
        if optimize:
            with stage("optimize: fuse, verify and time graph candidates on onnxruntime CPU"):
                manifest["optimization"] = _optimize_fp32(provisional, writer, kind, candidates)
        if kind.graph_edits:
            with stage(kind.graph_edits):
                passes = kind.graph_passes()
                log = transform_file(writer.path(fp32["file"]), writer.path(fp32["file"]), passes)
                manifest["io"]["inputs"] += [dict(spec) for p, record in zip(passes, log) if record["modified"]
                                             for spec in p.adds_inputs]  # the provisional bundle shares io
                manifest["provenance"]["graph_edits"] = log
        with stage("verify the kept fp32 graph against the golden I/O"):
            reports = verify(provisional, backend=REFERENCE_BACKEND)
        failed = [r for r in reports if not r.passed]
        if failed:
            lines = [f"{r.variant}: {c.name} failed (max |diff| {c.max_abs:.3g}, {c.detail})"
                     for r in failed for c in r.checks if not c.passed]
            notes = [f"export note: {note}" for note in source.notes]  # often the why (e.g. positions)
            raise EdgetxError("the exported graph does not reproduce PyTorch, so no bundle was written:\n  "
                              + "\n  ".join(lines + notes))
        for report in reports:
            manifest["variants"][report.variant]["parity"] = report.to_dict()
        schemes = kind.schemes_for(source.model) if quantize is None else quantize
        if schemes and source.quant_data is not None:
            _quantize_variants(provisional, writer, manifest, source, kind, schemes, stage)
        manifest["provenance"]["build"] = record.to_dict()  # before the last stage: hashing and renaming
        with stage("write manifest and move the bundle into place"):
            writer.commit(manifest)
    bundle = Bundle.load(out)
    if "ort" in formats:
        with stage("convert to the ORT format, check NNAPI/CoreML usability, verify the .ort files"):
            _add_ort(bundle)
    return bundle


def _add_ort(bundle: Bundle) -> None:
    from edgetx.build.convert import mobile_report, to_ort
    from edgetx.verify.parity import verify

    to_ort(bundle)
    mobile_report(bundle)
    failed = [f"{r.variant}: {c.name} ({c.detail})" for r in verify(bundle, backend="ort-format")
              for c in r.checks if not c.passed]
    if failed:
        raise EdgetxError(f"the .ort files in {bundle.path} do not reproduce the golden I/O: " + "; ".join(failed))
