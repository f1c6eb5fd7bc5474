"""The manifest: the one place that reads manifest.json, checks it against the published JSON Schema
(edgetx/bundle/manifest.schema.json, the same file the JS runtime checks), migrates older schema versions,
and gives the rest of edgetx typed access to it.

`Manifest` is the JSON document itself (a dict, so it serializes as is) with typed views: `variants`
(`Variant` per variant), `kind`, `inputs` / `outputs`, `tokenizer`, `quantization_results`,
`bench_results(...)` and so on. Code outside this module reads the manifest through them.

Versions: 2 (this edgetx writes) and 1 (read and migrated in memory: the golden block no longer repeats the
model kind, and the causal-LM `provenance.logits_to_keep` note became the kind-neutral
`provenance.graph_edits` list). A bundle's files are never rewritten to migrate it.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

from edgetx.errors import BundleError

SCHEMA_VERSION = 2
READS = (1, 2)  # schema versions this edgetx loads (older ones are migrated on load)
SCHEMA_FILE = "manifest.schema.json"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@functools.cache
def schema() -> dict:
    """The published JSON Schema of the current manifest version."""
    return json.loads(resources.files("edgetx.bundle").joinpath(SCHEMA_FILE).read_text())


@functools.cache
def _validator():
    try:
        import jsonschema
    except ImportError:
        raise BundleError("reading a bundle needs the jsonschema package: pip install jsonschema") from None
    return jsonschema.Draft202012Validator(schema())


# --- migrations: each takes a document of version N and returns one of version N + 1 -------------------

def _v1_to_v2(doc: dict) -> dict:
    golden = doc.get("golden")
    if isinstance(golden, dict):
        golden.pop("kind", None)
    provenance = doc.get("provenance")
    if isinstance(provenance, dict) and "logits_to_keep" in provenance:
        note = provenance.pop("logits_to_keep")
        record = {"pass": "logits-to-keep", "modified": note == "added"}
        if note != "added":
            record["skipped"] = str(note)
        provenance.setdefault("graph_edits", []).append(record)
    doc["schema_version"] = 2
    return doc


MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}


def migrate(doc: dict, where: object) -> dict:
    """`doc` brought to SCHEMA_VERSION (a copy when it was older); refuses versions this edgetx does not read."""
    version = doc.get("schema_version")
    if version not in READS or isinstance(version, bool):
        raise BundleError(f"{where}: schema_version {version!r:.80} is not one this edgetx reads (it reads "
                          f"{', '.join(map(str, READS))}); rebuild the bundle or upgrade edgetx")
    if version != SCHEMA_VERSION:
        doc = copy.deepcopy(doc)
        while doc["schema_version"] != SCHEMA_VERSION:
            doc = MIGRATIONS[doc["schema_version"]](doc)
    return doc


# --- validation with messages that say where and what ----------------------------------------------

def _location(path: list) -> str:
    """io.inputs[0], variants['fp32'].formats, model.vocab_size: how edgetx names a place in the manifest."""
    text = ""
    for i, part in enumerate(path):
        if isinstance(part, int):
            text += f"[{part}]"
        elif i > 0 and path[0] in ("variants", "files", "bench") and i == 1 or not _IDENTIFIER.match(str(part)):
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "the manifest"


def _message_for(error) -> tuple[str | None, int]:
    """The errorMessage of the deepest schema around a jsonschema error, and how deep in the document
    (how many path steps) the value it speaks of sits."""
    node, steps, message, depth = schema(), 0, None, 0
    tokens, located = list(error.absolute_schema_path), list(error.absolute_path)
    i = 0
    while True:
        while isinstance(node, dict) and "$ref" in node:  # local references only: "#/$defs/name"
            node = functools.reduce(lambda n, key: n[key], node["$ref"].removeprefix("#/").split("/"), schema())
        if isinstance(node, dict) and "errorMessage" in node:
            message, depth = node["errorMessage"], steps
        if i >= len(tokens):
            return message, depth
        token = tokens[i]
        if token in ("properties", "patternProperties") and i + 1 < len(tokens):
            node, steps, i = node[token][tokens[i + 1]], steps + 1, i + 2
        elif token in ("additionalProperties", "items") and steps < len(located):
            node, steps, i = node[token], steps + 1, i + 1
        elif token in ("anyOf", "oneOf", "allOf") and i + 1 < len(tokens):
            node, i = node[token][tokens[i + 1]], i + 2
        elif token == "$ref":
            i += 1
        else:
            return message, depth


def _explain(error, doc: dict) -> str:
    """One line for a jsonschema error: where in the manifest, what was expected, what was there."""
    message, depth = _message_for(error)
    located = list(error.absolute_path)
    owner = located[:depth] if message else located
    if message is None:
        return f"{_location(owner)}: {error.message[:200]}"
    value = functools.reduce(lambda v, key: v[key], owner, doc)
    if "{value}" in message:
        return f"{_location(owner)} {message.format(value=repr(value)[:200])}"
    return f"{_location(owner)} {message}, got {value!r:.200}"


def validate(doc: dict, where: object) -> None:
    """Check a current-version document against the schema; the first problem as a BundleError."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise BundleError(f"{where}: {_explain(errors[0], doc)}")


# --- typed views -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One precision/format of the model inside a bundle, as its manifest describes it."""

    name: str
    precision: str
    file: str
    parity: dict | None = None
    formats: dict[str, str] | None = None  # other serializations: {"ort": "fp32/model.ort", "onnx-fixed": ...}
    tolerance: dict | None = None  # the budget its checks are held to (recorded at build time)
    scheme: str | None = None  # the quantization scheme that made it
    fixed_shape: dict | None = None  # the dims of its fixed-shape copy, and how that copy was checked
    sha256: str | None = None
    bytes: int | None = None
    extra: dict = field(default_factory=dict)
    # a model of several graphs (an encoder-decoder): each other graph's file by component name (io.components)
    components: dict[str, str] = field(default_factory=dict)
    # their other serializations, as `formats` is the main graph's: {"text": {"onnx-fixed": "fp32/text.fixed.onnx"}}
    component_formats: dict[str, dict[str, str]] = field(default_factory=dict)

    def files(self) -> list[str]:
        """Every ONNX file of this variant: its main graph first, then its other components'."""
        return [self.file, *self.components.values()]

    def component_file(self, component: str | None, model_format: str = "onnx") -> str:
        """The bundle-relative file of one of this variant's graphs (None: the main one) in `model_format`."""
        if component is None:
            return self.file_for(model_format)
        if component not in self.components:
            raise BundleError(f"variant {self.name!r} has no {component!r} graph (it has: "
                              f"{', '.join(['main', *self.components]) })")
        if model_format == "onnx":
            return self.components[component]
        other = self.component_formats.get(component, {})
        if model_format not in other:
            raise BundleError(f"variant {self.name!r} has no {model_format!r} file of its {component!r} graph"
                              + (" (add it with `edgetx convert BUNDLE --to fixed`)" if model_format == "onnx-fixed"
                                 else ""))
        return other[model_format]

    def file_for(self, model_format: str) -> str:
        """The bundle-relative file of this variant in `model_format` ("onnx" or one of `formats`)."""
        if model_format == "onnx":
            return self.file
        if model_format not in (self.formats or {}):
            hint = " (add it with `edgetx convert BUNDLE --to ort`)" if model_format == "ort" else ""
            raise BundleError(f"variant {self.name!r} has no {model_format!r} file{hint}")
        return self.formats[model_format]

    @classmethod
    def from_dict(cls, name: str, entry: dict) -> "Variant":
        known = {"precision", "file", "parity", "formats", "tolerance", "scheme", "fixed_shape", "sha256", "bytes",
                 "components", "component_formats"}
        return cls(name, entry.get("precision", "?"), entry["file"], entry.get("parity"), entry.get("formats"),
                   entry.get("tolerance"), entry.get("scheme"), entry.get("fixed_shape"), entry.get("sha256"),
                   entry.get("bytes"), {k: v for k, v in entry.items() if k not in known},
                   dict(entry.get("components") or {}), dict(entry.get("component_formats") or {}))


class Manifest(dict):
    """manifest.json as loaded: validated, at the current schema version, with typed views."""

    @classmethod
    def parse(cls, data: bytes | str, where: object) -> "Manifest":
        """Decode, migrate and validate manifest.json's contents."""
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise BundleError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(doc, dict):
            raise BundleError(f"{where}: expected a JSON object at the top level")
        return cls.checked(doc, where)

    @classmethod
    def checked(cls, doc: dict, where: object) -> "Manifest":
        """A document (any version this edgetx reads) as a validated current-version Manifest."""
        doc = migrate(doc, where)
        validate(doc, where)
        return cls(doc)

    # --- the blocks ------------------------------------------------------------------------------
    @property
    def model(self) -> dict:
        return self["model"]

    @property
    def kind(self) -> object:
        """model.kind (edgetx.kinds.get_kind turns it into the kind's object)."""
        return self["model"].get("kind")

    @property
    def io(self) -> dict:
        return self["io"]

    @property
    def tokenizer(self) -> dict:
        return self.get("tokenizer") or {}

    @property
    def files(self) -> dict[str, dict]:
        return self["files"]

    @property
    def golden(self) -> dict:
        return self["golden"]

    @property
    def provenance(self) -> dict:
        return self["provenance"]

    @property
    def optimization(self) -> dict | None:
        return self.get("optimization")

    @property
    def quantization(self) -> dict | None:
        """The build's quantization record: its data file and every scheme's result."""
        return self.get("quantization")

    @property
    def mobile(self) -> dict:
        return self.get("mobile") or {}

    @property
    def variants(self) -> dict[str, Variant]:
        return {name: Variant.from_dict(name, entry) for name, entry in self["variants"].items()}

    @property
    def quantization_results(self) -> dict[str, dict]:
        """Every scheme the build tried: its gate metrics, whether it passed, by how much it missed."""
        return (self.get("quantization") or {}).get("results") or {}

    def bench_results(self, backend: str | None = None, threads: str | None = None) -> list[dict]:
        """Stored `edgetx bench` results, optionally of one backend and thread setting."""
        return [r for r in (self.get("bench") or {}).values()
                if (backend is None or r.get("backend") == backend) and (threads is None or str(r["threads"]) == threads)]

    def with_bench(self, results: list[dict]) -> dict:
        """The bench block with `results` stored over any earlier ones of the same variant/backend/threads."""
        stored = dict(self.get("bench") or {})
        stored.update({f"{r['variant']}@{r['backend']}@threads={r['threads']}": r for r in results})
        return stored
