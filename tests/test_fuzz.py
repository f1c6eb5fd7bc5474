"""Fuzzing: damaged or hostile manifests, ONNX files, golden .npz files, tokenizer files and runtime
inputs each end in an edgetx error that names the problem (or run correctly) — never a crash, a
hang, partial output or another exception.

Damaged files are re-hashed into the manifest (a hostile bundle is self-consistent), so the checks
behind the sha256 are what is tested. ONNX files that pass edgetx's own checks are loaded and run by
onnxruntime in a worker process with a timeout, so a crash inside onnxruntime is a failed case, not
a dead pytest. `benchmarks/reliability.py fuzz --cases N` runs these targets for longer.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgetx.bundle import Bundle, sha256_file
from edgetx.errors import EdgetxError, InputError
from edgetx.runtimes import GenerationConfig, Generator, Session
from edgetx.kinds.decoding import empty_cache
from edgetx.runtimes.tokenizer import apply_chat_template, tokenizer_for

# CI-sized and repeatable (derandomized); the long run in benchmarks/reliability.py is random.
CI = settings(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
VOCAB, CONTEXT = 256, 256  # the tiny bundle's model.vocab_size and model.max_positions


def classify(call: Callable[[], object]) -> tuple[str, str]:
    """("ok" | the edgetx error's class | "BUG <exception class>", message) of running `call`."""
    try:
        call()
    except EdgetxError as e:
        return type(e).__name__, str(e)
    except Exception as e:  # noqa: BLE001 - anything else is what fuzzing looks for
        return f"BUG {type(e).__name__}", str(e)
    return "ok", ""


def expect_clean(outcome: tuple[str, str]) -> None:
    """Fail on a non-edgetx exception, or an edgetx error without a message."""
    kind, message = outcome
    assert not kind.startswith("BUG"), f"{kind}: {message}"
    assert kind == "ok" or message.strip(), f"{kind} without a message"


# --- a bundle that cases damage and restore -----------------------------------------------------
class Workspace:
    """A private copy of a bundle. `put` writes a file and re-hashes it into the manifest (as a
    hostile bundle would); `restore` puts every file back."""

    def __init__(self, master: Path, folder: Path):
        self.path = folder
        if not folder.exists():
            shutil.copytree(master, folder)
        self.saved = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.touched = {"manifest.json"}

    def original(self, rel: str) -> bytes:
        """The file's bytes before any case touched it."""
        return self.saved[rel]

    def manifest(self) -> dict:
        """The original manifest."""
        return json.loads(self.saved["manifest.json"])

    def put(self, rel: str, data: bytes, rehash: bool = True) -> None:
        self.touched.add(rel)
        (self.path / rel).write_bytes(data)
        if rehash:
            manifest = json.loads((self.path / "manifest.json").read_text())
            entry = {"sha256": sha256_file(self.path / rel), "bytes": len(data)}
            manifest["files"][rel] = entry
            for variant in manifest["variants"].values():
                if variant.get("file") == rel:
                    variant.update(entry)
            (self.path / "manifest.json").write_text(json.dumps(manifest))

    def restore(self) -> None:
        for path in sorted(self.path.rglob("*"), reverse=True):  # files a case added (symlinks included)
            if path.relative_to(self.path).as_posix() not in self.saved and (path.is_symlink() or path.is_file()):
                path.unlink()
        for rel in self.touched & set(self.saved):
            (self.path / rel).unlink(missing_ok=True)
            (self.path / rel).write_bytes(self.saved[rel])
        self.touched = {"manifest.json"}


def with_hf_tokenizer(ws: Workspace) -> Workspace:
    """Give the workspace's bundle a small WordLevel tokenizer.json (ids < 256), like an HF bundle."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set("def return import class self if else for in while with as the a of to and or not "
                       "None True False print range len list dict x y i n".split()))
    tk = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    (ws.path / "tokenizer").mkdir(exist_ok=True)
    ws.put("tokenizer/tokenizer.json", tk.to_str().encode(), rehash=True)
    manifest = json.loads((ws.path / "manifest.json").read_text())
    manifest["tokenizer"] = {"type": "hf", "file": "tokenizer/tokenizer.json", "eos_token_ids": [0], "pad_token_id": 0}
    (ws.path / "manifest.json").write_text(json.dumps(manifest))
    return Workspace(ws.path, ws.path)


# --- onnxruntime in a worker process ------------------------------------------------------------
_WORKER = r"""
import json, os, sys
out = os.fdopen(int(sys.argv[1]), "w")
from edgetx.errors import EdgetxError
from edgetx.runtimes import GenerationConfig, Generator, Session
for line in sys.stdin:
    try:
        session = Session(line.strip())
        tokens = list(Generator(session).tokens([1, 2, 3], GenerationConfig(max_new_tokens=3)))
        reply = ["ok", ""]
    except EdgetxError as e:
        reply = [type(e).__name__, str(e)]
    except Exception as e:
        reply = ["BUG " + type(e).__name__, str(e)]
    sys.stdout.flush()
    out.write(json.dumps(reply) + "\n")
    out.flush()
"""


class OrtWorker:
    """Loads and runs bundles in a child process; a child that dies is a CRASH, one that takes
    longer than `timeout` a HANG, anything it prints to stdout NOISE (partial output)."""

    def __init__(self, timeout: float = 60.0):
        self.timeout, self.proc = timeout, None

    def _start(self) -> None:
        self.replies, child_end = os.pipe()
        self.stdout_r, stdout_w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(child_end)], stdin=subprocess.PIPE,
                                     stdout=stdout_w, stderr=subprocess.DEVNULL, pass_fds=(child_end,), text=True)
        os.close(child_end)
        os.close(stdout_w)

    def ask(self, bundle: Path) -> tuple[str, str]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(f"{bundle}\n")
        self.proc.stdin.flush()
        reply = b""
        while not reply.endswith(b"\n"):
            ready, _, _ = select.select([self.replies], [], [], self.timeout)
            chunk = os.read(self.replies, 1 << 16) if ready else None
            if not chunk:
                code = self.proc.poll()
                self.close()
                return ("HANG", f"no answer in {self.timeout} s") if code is None else ("CRASH", f"exit status {code}")
            reply += chunk
        noise = b""
        while select.select([self.stdout_r], [], [], 0)[0] and (chunk := os.read(self.stdout_r, 1 << 16)):
            noise += chunk
        if noise:
            return "NOISE", noise.decode(errors="replace")[:300]
        kind, message = json.loads(reply)
        return kind, message

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for fd in (self.replies, self.stdout_r):
                os.close(fd)
            self.proc = None


# --- targets: a strategy of cases and a runner per kind of input --------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
                    | st.sampled_from(["../x", "/etc/hostname", "fp32/model.onnx", "golden.npz", "int64", "", "é\x00"]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path in a JSON value."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [p for key, child in items for p in [prefix + (key,)] + _paths(child, prefix + (key,))]


def json_edits() -> st.SearchStrategy:
    """1-3 edits of a JSON document: (path index, delete?, new value)."""
    return st.lists(st.tuples(st.integers(0, 10**6), st.booleans(), JSON), min_size=1, max_size=3)


def apply_json_edits(doc: object, edits: list) -> object:
    """A copy of `doc` with each edit's path (taken modulo the paths there are) deleted or replaced."""
    doc = json.loads(json.dumps(doc))
    for index, delete, value in edits:
        paths = _paths(doc)
        if not paths:
            return value
        *parents, key = paths[index % len(paths)]
        holder = doc
        for part in parents:
            holder = holder[part]
        if delete and isinstance(holder, dict):
            del holder[key]
        else:
            holder[key] = value
    return doc


def byte_edits() -> st.SearchStrategy:
    """Truncation, bit flips, overwritten or inserted bytes, at fractions of the file's length."""
    at = st.floats(0, 1, exclude_max=True)
    return st.one_of(st.tuples(st.just("truncate"), at, st.just(b"")),
                     st.tuples(st.just("flip"), st.lists(at, min_size=1, max_size=8), st.integers(0, 7)),
                     st.tuples(st.just("overwrite"), at, st.binary(min_size=1, max_size=8)),
                     st.tuples(st.just("insert"), at, st.binary(min_size=1, max_size=8)))


def apply_byte_edit(data: bytes, edit: tuple) -> bytes:
    """`data` truncated, bit-flipped, overwritten or with bytes inserted, as `edit` says."""
    kind, where, extra = edit
    if kind == "flip":
        out = bytearray(data)
        for fraction in where:
            out[int(fraction * len(out))] ^= 1 << extra
        return bytes(out)
    cut = int(where * len(data))
    return {"truncate": data[:cut], "overwrite": data[:cut] + extra + data[cut + len(extra):],
            "insert": data[:cut] + extra + data[cut:]}[kind]


def exercise(path: Path, tokenizer_text: str = "def x in range") -> None:
    """What an app does with a bundle: load, run, generate, read the golden I/O, tokenize."""
    bundle = Bundle.load(path)
    session = Session(bundle)
    list(Generator(session).tokens([1, 2, 3], GenerationConfig(max_new_tokens=2)))
    bundle.golden()
    tokenizer = tokenizer_for(bundle)
    tokenizer.decode(tokenizer.encode(tokenizer_text))


def run_manifest_case(ws: Workspace, case: tuple) -> tuple[str, str]:
    """Edit manifest.json (as JSON, then maybe as bytes) and use the bundle as an app would."""
    raw, edits, byte_edit = case
    text = json.dumps(apply_json_edits(ws.manifest(), edits)).encode()
    ws.put("manifest.json", apply_byte_edit(text, byte_edit) if raw else text, rehash=False)
    try:
        return classify(lambda: exercise(ws.path))
    finally:
        ws.restore()


ONNX_FIELDS = ["dims", "data_type", "raw_data", "external", "name", "op_type"]


def onnx_edits() -> st.SearchStrategy:
    """Byte edits of fp32/model.onnx, or a field of one initializer/node set to a hostile value."""
    field = st.tuples(st.sampled_from(ONNX_FIELDS), st.integers(0, 10**4),
                      st.one_of(st.lists(st.integers(-2**63, 2**63 - 1), max_size=4), st.integers(-5, 40),
                                st.sampled_from(["../golden.npz", "/etc/hostname", "model.onnx", "nothere.bin",
                                                 "\udcff", "", "x" * 300])))
    return st.one_of(byte_edits().map(lambda e: ("bytes", e)), field.map(lambda f: ("field", f)))


def mutate_onnx(data: bytes, case: tuple) -> bytes:
    """The ONNX file with one byte edit or one hostile field value (via the onnx package)."""
    import onnx

    kind, edit = case
    if kind == "bytes":
        return apply_byte_edit(data, edit)
    field, index, value = edit
    model = onnx.load_from_string(data)
    tensor = model.graph.initializer[index % len(model.graph.initializer)]
    node = model.graph.node[index % len(model.graph.node)]
    ints = value if isinstance(value, list) else [value] if isinstance(value, int) else [len(value)]
    if field == "dims":
        tensor.ClearField("dims")
        tensor.dims.extend(ints)
    elif field == "data_type":
        tensor.data_type = ints[0] % 64 if ints else 0
    elif field == "raw_data":
        tensor.raw_data = tensor.raw_data[: max(ints[0], 0) if ints else 0]
    elif field == "external":
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        location = value if isinstance(value, str) else "model.onnx"
        for key, text in (("location", location), ("offset", str(ints[0] if ints else 0))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, text.encode("utf-8", "surrogateescape").decode("latin-1")
    elif field == "name":  # same length, no longer UTF-8
        name = model.graph.input[index % len(model.graph.input)].name.encode()
        return data.replace(name, b"\xff" + name[1:])
    else:
        node.op_type = value if isinstance(value, str) else f"Op{ints}"
    return model.SerializeToString()


def run_onnx_case(ws: Workspace, worker: OrtWorker, case: tuple) -> tuple[str, str]:
    """Load the damaged bundle here (edgetx's checks), then, if it passes, in onnxruntime's worker."""
    rel = "fp32/model.onnx"
    try:
        ws.put(rel, mutate_onnx(ws.original(rel), case))
    except (ValueError, UnicodeError) as e:  # onnx itself refused to write the edit: nothing to test
        ws.restore()
        return "skipped", str(e)
    try:
        outcome = classify(lambda: Bundle.load(ws.path))
        return outcome if outcome[0] != "ok" else worker.ask(ws.path)
    finally:
        ws.restore()


def npz_edits() -> st.SearchStrategy:
    """Byte edits of golden.npz, or one member's .npy header field (or data length) changed inside a
    rebuilt, self-consistent zip: what a hostile bundle would carry."""
    header = st.tuples(st.integers(0, 99), st.sampled_from(["shape", "descr", "data"]),
                       st.sampled_from(["(99999999999, 99999999999)", "(-1,)", "()", "(0,)", "'|O'", "'<f8'",
                                        "'<i4'", "'x'", "[1, 2]", "'<U3'"]))
    return st.one_of(byte_edits().map(lambda e: ("bytes", e)), header.map(lambda h: ("member", h)))


def mutate_npz(data: bytes, case: tuple) -> bytes:
    import io
    import re
    import zipfile

    kind, edit = case
    if kind == "bytes":
        return apply_byte_edit(data, edit)
    index, key, value = edit
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    name = sorted(members)[index % len(members)]
    raw = members[name]
    size = int.from_bytes(raw[8:10], "little")
    header, body = raw[10 : 10 + size].decode("latin-1").strip(), raw[10 + size :]
    if key == "data":
        body = body[: len(body) // 2]
    else:
        pattern = r"'shape': \([^)]*\)" if key == "shape" else r"'descr': '[^']*'"
        header = re.sub(pattern, f"'{key}': {value}", header)
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    members[name] = raw[:8] + len(header).to_bytes(2, "little") + header.encode("latin-1") + body
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    return out.getvalue()


def run_npz_case(ws: Workspace, case: tuple) -> tuple[str, str]:
    """Damage golden.npz (re-hashed) and read the golden I/O."""
    ws.put("golden.npz", mutate_npz(ws.original("golden.npz"), case))
    try:
        return classify(lambda: Bundle.load(ws.path).golden())
    finally:
        ws.restore()


def tokenizer_cases() -> st.SearchStrategy:
    """Edits of tokenizer.json (as JSON, then maybe as bytes) and a text to encode."""
    return st.tuples(st.booleans(), json_edits(), byte_edits(), st.text(max_size=20) | st.sampled_from(["\ud800x", ""]))


def run_tokenizer_case(ws: Workspace, case: tuple) -> tuple[str, str]:
    """Damage tokenizer.json (re-hashed), then load, run, generate and tokenize."""
    raw, edits, byte_edit, text = case
    rel = "tokenizer/tokenizer.json"
    data = json.dumps(apply_json_edits(json.loads(ws.original(rel)), edits)).encode()
    ws.put(rel, apply_byte_edit(data, byte_edit) if raw else data)
    try:
        return classify(lambda: exercise(ws.path, text))
    finally:
        ws.restore()


@pytest.fixture(scope="module")
def workspace(tiny_bundle_master, tmp_path_factory) -> Workspace:
    return Workspace(tiny_bundle_master, tmp_path_factory.mktemp("fuzz") / "tiny")


@pytest.fixture(scope="module")
def hf_workspace(tiny_bundle_master, tmp_path_factory) -> Workspace:
    return with_hf_tokenizer(Workspace(tiny_bundle_master, tmp_path_factory.mktemp("fuzz-hf") / "tiny"))


@pytest.fixture(scope="module")
def worker():
    w = OrtWorker()
    yield w
    w.close()


@settings(CI, max_examples=500)
@given(case=st.tuples(st.booleans(), json_edits(), byte_edits()))
def test_fuzz_manifest(workspace, case):
    expect_clean(run_manifest_case(workspace, case))


@pytest.mark.slow
@settings(CI, max_examples=300)
@given(case=onnx_edits())
def test_fuzz_onnx_file(workspace, worker, case):
    kind, message = run_onnx_case(workspace, worker, case)
    assert kind not in ("CRASH", "HANG", "NOISE"), f"{kind}: {message}"
    expect_clean((kind, message))


@settings(CI, max_examples=400)
@given(case=npz_edits())
def test_fuzz_golden_npz(workspace, case):
    expect_clean(run_npz_case(workspace, case))


@settings(CI, max_examples=400)
@given(case=tokenizer_cases())
def test_fuzz_tokenizer_json(hf_workspace, case):
    expect_clean(run_tokenizer_case(hf_workspace, case))


# --- runtime inputs: each case knows what it broke, so the error must name it ------------------
FEED_EDITS = ["rename", "drop", "extra", "dtype", "rank", "dim", "oov", "position", "mask", "nan", "not_array"]


def feed_cases() -> st.SearchStrategy:
    """A valid feed shape (batch, seq, past, seed) and 0-2 edits (kind, which input, a number)."""
    edit = st.tuples(st.sampled_from(FEED_EDITS), st.integers(0, 6), st.sampled_from([-1, 2, 7, 256, 300, 2**40]))
    seq = st.integers(1, 8) | st.sampled_from([0, "past the context"])
    return st.tuples(st.integers(1, 3), seq, st.integers(0, 8), st.integers(0, 2**32 - 1), st.lists(edit, max_size=2))


def make_feeds(inputs: list[dict], batch: int, seq: int, past: int, seed: int) -> dict[str, np.ndarray]:
    """Valid causal-LM feeds: random ids, a cache of `past` random positions, a full mask."""
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, VOCAB, (batch, seq)), "attention_mask": np.ones((batch, past + seq), np.int64),
             "position_ids": np.broadcast_to(np.arange(past, past + seq), (batch, seq)).copy()}
    for name, value in empty_cache(inputs, batch).items():
        shape = list(value.shape)
        shape[2] = past
        feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def edit_feeds(feeds: dict, edits: list, names: list[str]) -> list[str]:
    """Apply the edits in place; return the words the error message must contain (one per edit)."""
    expected = []
    for kind, which, number in edits:
        arrays = [n for n in names if isinstance(feeds.get(n), np.ndarray)]
        if not arrays:
            continue
        name = arrays[which % len(arrays)]
        value = feeds[name]
        if kind in ("oov", "position", "mask"):
            name = {"oov": "input_ids", "position": "position_ids", "mask": "attention_mask"}[kind]
            if name not in arrays or feeds[name].size == 0:
                continue
            bad = {"oov": [-1, 256, 300, 2**40], "position": [-1, 256, 300], "mask": [-1, 2, 7]}[kind]
            feeds[name].flat[which % feeds[name].size] = bad[number % len(bad)] if number not in bad else number
        elif kind == "nan":
            floats = [n for n in arrays if feeds[n].dtype.kind == "f" and feeds[n].size]
            if not floats:
                continue
            name = floats[which % len(floats)]
            feeds[name].flat[number % feeds[name].size] = [np.nan, np.inf, -np.inf][which % 3]
        elif kind == "rename":
            feeds[name + "_x"] = feeds.pop(name)
        elif kind == "drop":
            del feeds[name]
        elif kind == "extra":
            name = "bogus"
            feeds[name] = np.zeros(1)
        elif kind == "dtype":
            other = [np.int32, np.float64, np.float16, np.uint8, np.bool_, np.int64, np.float32]
            feeds[name] = value.astype(next(t for t in other[which % 5 :] if np.dtype(t) != value.dtype))
        elif kind == "rank":
            feeds[name] = value[None] if which % 2 else value.reshape(-1)
        elif kind == "dim":
            axis = which % value.ndim
            feeds[name] = np.zeros([d + (a == axis) for a, d in enumerate(value.shape)], value.dtype)
        else:
            feeds[name] = value.tolist() if which % 2 else None
        expected.append(name)
    return expected


@pytest.fixture(scope="module")
def session(tiny_bundle_master) -> Session:
    return Session(tiny_bundle_master)


def run_feed_case(session: Session, case: tuple) -> tuple[str, str]:
    """Run one case; "BUG" unless a clean case runs and a broken one is refused naming what broke."""
    batch, seq, past, seed, edits = case
    seq = CONTEXT + 1 - past if seq == "past the context" else seq
    feeds = make_feeds(session.inputs, batch, seq, past, seed)
    expected = edit_feeds(feeds, edits, [s["name"] for s in session.inputs])
    expected += ["no tokens"] if seq == 0 else ["at most 256"] if past + seq > CONTEXT else []
    outcome = classify(lambda: session.run(feeds))
    if not expected and outcome[0] != "ok":
        return f"BUG refused valid inputs: {outcome[0]}", outcome[1]
    if expected and outcome[0] != "InputError":
        return f"BUG expected an InputError naming {expected}, got {outcome[0]}", outcome[1]
    if expected and not any(word in outcome[1] for word in expected):
        return "BUG message does not name the problem", f"{expected}: {outcome[1]}"
    return outcome


def generation_cases() -> st.SearchStrategy:
    """A valid prompt and config, then maybe a broken prompt and/or one broken config field."""
    good = st.fixed_dictionaries({"max_new_tokens": st.integers(0, 4), "temperature": st.sampled_from([0, 0.7, 1.5]),
                                  "top_k": st.none() | st.integers(1, 5), "top_p": st.none() | st.floats(0.05, 1),
                                  "seed": st.none() | st.integers(0, 2**32), "stop": st.sampled_from([(), (b"x",)])})
    bad = st.sampled_from([("max_new_tokens", -1), ("max_new_tokens", 2.5), ("max_new_tokens", None),
                           ("temperature", -1.0), ("temperature", float("nan")), ("temperature", float("inf")),
                           ("temperature", "hot"), ("top_k", 0), ("top_k", 2.5), ("top_p", 0.0), ("top_p", 1.5),
                           ("top_p", float("nan")), ("seed", -2), ("stop", (b"",)), ("stop", ("s",))])
    prompt = st.lists(st.integers(0, 255), min_size=1, max_size=6) | st.text(min_size=1, max_size=8).filter(
        lambda t: "\ud800" not in t)
    broken = st.sampled_from([[], [-1], [256], [2**40], [1.5], [None], "", "\ud800x", [7] * CONTEXT, 17])
    return st.tuples(prompt | broken, good, st.none() | bad).map(lambda c: (c[0], {**c[1], **dict([c[2]] if c[2] else [])}))


def generation_is_valid(prompt: object, cfg: dict) -> bool:
    """An independent statement of what Generator must accept (the oracle)."""
    if not isinstance(prompt, (str, list)):
        return False
    ids = list(prompt.encode("utf-8", "replace")) if isinstance(prompt, str) else prompt
    real = (int, float)
    return (all(isinstance(t, int) and 0 <= t < VOCAB for t in ids) and 1 <= len(ids) < CONTEXT
            and (not isinstance(prompt, str) or "\ud800" not in prompt)
            and isinstance(cfg["max_new_tokens"], int) and cfg["max_new_tokens"] >= 0
            and isinstance(cfg["temperature"], real) and 0 <= cfg["temperature"] < float("inf")
            and (cfg["top_k"] is None or isinstance(cfg["top_k"], int) and cfg["top_k"] >= 1)
            and (cfg["top_p"] is None or 0 < cfg["top_p"] <= 1) and (cfg["seed"] is None or cfg["seed"] >= 0)
            and all(isinstance(s, bytes) and s for s in cfg["stop"]))


def run_generation_case(generator: Generator, case: tuple) -> tuple[str, str]:
    """Generate; "BUG" unless the outcome agrees with the oracle (and valid runs give valid tokens)."""
    prompt, cfg = case
    config = GenerationConfig(**cfg)
    produced: list = []
    call = (lambda: produced.append(generator.generate(prompt, config))) if isinstance(prompt, str) \
        else (lambda: produced.extend(generator.tokens(prompt, config)))
    outcome = classify(call)
    valid = generation_is_valid(prompt, cfg)
    if valid != (outcome[0] == "ok") or (not valid and outcome[0] != "InputError"):
        return f"BUG valid={valid} but {outcome[0]}", f"{outcome[1]} for {case!r:.200}"
    if valid and isinstance(prompt, list) and (len(produced) > cfg["max_new_tokens"]
                                                 or not all(0 <= t < VOCAB for t in produced)):
        return "BUG tokens", repr(produced)
    return outcome


@settings(CI, max_examples=1500)
@given(case=feed_cases())
def test_fuzz_session_inputs(session, case):
    expect_clean(run_feed_case(session, case))


@settings(CI, max_examples=600)
@given(case=generation_cases())
def test_fuzz_generation_requests(session, case):
    expect_clean(run_generation_case(Generator(session), case))


# --- each refused input, with the words its error must say --------------------------------------
def onnx_change(change: Callable) -> Callable[[Workspace], None]:
    """A setup that edits fp32/model.onnx's first large initializer (or the model) and re-hashes it."""
    def setup(ws: Workspace) -> None:
        import onnx

        model = onnx.load_from_string(ws.original("fp32/model.onnx"))
        tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        out = change(model, tensor, ws)
        ws.put("fp32/model.onnx", out if isinstance(out, bytes) else model.SerializeToString())
    return setup


def external(location: str, offset: int = 0, write: str | None = None, listed: bool = False, link: bool = False):
    """Move the tensor's data to `location` (relative to fp32/), optionally writing it there first."""
    def change(model, tensor, ws: Workspace) -> None:
        import onnx

        data = tensor.raw_data
        if write:
            target = ws.path / "fp32" / write
            if link:
                (ws.path.parent / "outside.bin").write_bytes(data)
                target.symlink_to(ws.path.parent / "outside.bin")
            else:
                target.write_bytes(data)
                if listed:
                    ws.put(f"fp32/{write}", data)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return change


def nested_ifs(model, tensor, ws) -> bytes:
    """A model whose If nodes nest 30 graphs deep (90 protobuf levels)."""
    from onnx import TensorProto, helper

    leaf = graph = helper.make_graph([helper.make_node("Identity", ["c"], ["y"])], "g", [],
                                     [helper.make_tensor_value_info("y", TensorProto.BOOL, [])])
    for _ in range(30):
        node = helper.make_node("If", ["c"], ["y"], then_branch=graph, else_branch=leaf)
        graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.BOOL, [])])
    return helper.make_model(graph).SerializeToString()


def manifest_change(change: Callable[[dict], None]) -> Callable[[Workspace], None]:
    """A setup that edits manifest.json (not re-hashed: the manifest is not hash-listed)."""
    def setup(ws: Workspace) -> None:
        manifest = json.loads((ws.path / "manifest.json").read_text())
        change(manifest)
        (ws.path / "manifest.json").write_text(json.dumps(manifest))
    return setup


def file_change(rel: str, change: Callable[[bytes], bytes]) -> Callable[[Workspace], None]:
    """A setup that replaces a file's bytes and re-hashes it."""
    return lambda ws: ws.put(rel, change(ws.original(rel)))


def zip_bomb(data: bytes) -> bytes:
    """golden.npz whose first member claims to expand to 4 GB (central directory edited)."""
    at = data.find(b"PK\x01\x02")
    return data[: at + 24] + (0xFFFFFFF0).to_bytes(4, "little") + data[at + 28 :]


def load(ws: Workspace) -> None:
    """Load the bundle and read its golden I/O."""
    Bundle.load(ws.path).golden()


def generate(ws: Workspace, prompt: object = "def x", **config) -> None:
    """Load the bundle and generate two tokens."""
    Generator(Session(ws.path)).generate(prompt, GenerationConfig(**{"max_new_tokens": 2, **config}))


REFUSED = {  # what is refused: (setup, call, regex the message must match)
    "external data with ../": (onnx_change(external("../golden.npz")), load,
                               r"external data location '\.\./golden\.npz' must be a relative path inside the bundle"),
    "external data at an absolute path": (onnx_change(external("/etc/hostname")), load, "relative path inside the bundle"),
    "external data through a symlink out": (onnx_change(external("link.bin", write="link.bin", link=True)), load,
                                            r"external data 'link\.bin' resolves outside the bundle \(a symlink\?\)"),
    "external data not hash-listed": (onnx_change(external("w.bin", write="w.bin")), load,
                                      r"external data file 'fp32/w\.bin' is not listed under 'files'"),
    "external data past the file's end": (onnx_change(external("w.bin", 1 << 40, "w.bin", listed=True)), load,
                                          r"offset 1099511627776 .* does not fit"),
    "a name that is not UTF-8": (onnx_change(lambda m, t, ws: ws.original("fp32/model.onnx").replace(
        b"input_ids", b"\xffnput_ids")), load, r"not UTF-8 text .*in model\.graph\[0\]\.(node\[\d+\]\.input|input\[0\]\.name)"),
    "a truncated ONNX file": (file_change("fp32/model.onnx", lambda d: d[: len(d) // 2]), load, r"truncated\?"),
    "huge tensor dims": (onnx_change(lambda m, t, ws: t.dims.extend([1 << 40])), load,
                         r"a tensor of shape \[.*1099511627776\] and data_type 1 needs \d+ bytes but holds"),
    "negative tensor dims": (onnx_change(lambda m, t, ws: t.dims.__setitem__(0, -3)), load, "negative dimension"),
    "not an ONNX file": (file_change("fp32/model.onnx", lambda d: b'{"graph": 1}'), load, "which ONNX never uses"),
    "an empty ONNX file": (file_change("fp32/model.onnx", lambda d: b""), load, "the file is empty"),
    "graphs nested too deep": (onnx_change(nested_ifs), load, "nested deeper than 64 levels"),
    "an operator onnxruntime lacks": (onnx_change(lambda m, t, ws: setattr(m.graph.node[0], "op_type", "NoSuchOp")),
                                      generate, "onnxruntime could not load .*NoSuchOp"),
    "weights that make NaN": (onnx_change(lambda m, t, ws: setattr(t, "raw_data", b"\xff" * len(t.raw_data))),
                              generate, r"produced non-finite logits \(NaN/inf\)"),
    "a truncated .npz": (file_change("golden.npz", lambda d: d[: len(d) // 2]), load, r"golden\.npz: not a readable \.npz"),
    "a pickled .npz member": (file_change("golden.npz", lambda d: mutate_npz(d, ("member", (0, "descr", "'|O'")))),
                              load, r"holds Python objects \(pickle\); edgetx never loads pickle"),
    "an .npz header that lies": (file_change("golden.npz", lambda d: mutate_npz(d, ("member", (0, "shape", "(9, 9)")))),
                                 load, r"declares shape \(9, 9\) of .* but holds"),
    "an .npz zip bomb": (file_change("golden.npz", zip_bomb), load, r"would expand .* \(a zip bomb\?\)"),
    "manifest io spec": (manifest_change(lambda m: m["io"]["inputs"][0].update(dtype="int65")), generate,
                         r"io\.inputs\[0\] must be \{name: str, dtype: a numpy dtype name"),
    "manifest vocab size": (manifest_change(lambda m: m["model"].update(vocab_size=-4)), generate,
                            "model.vocab_size must be a positive integer, got -4"),
    "manifest formats": (manifest_change(lambda m: m["variants"]["fp32"].update(formats=["x"])), load,
                         r"variants\['fp32'\]\.formats must map format names"),
    "manifest golden file": (manifest_change(lambda m: m["golden"].update(file=["golden.npz"])), load,
                             r"golden\.file \['golden\.npz'\] is not listed"),
    "manifest cache contract": (manifest_change(lambda m: m["io"]["inputs"][3]["shape"].__setitem__(1, "heads")),
                                generate, r"causal-LM graph contract: cache input 'past_key_values\.0\.key' must have"),
}
REFUSED_HF = {
    "tokenizer.json that is not JSON": (file_change("tokenizer/tokenizer.json", lambda d: d[:40]), generate,
                                        r"tokenizer\.json: the tokenizer failed to load"),
    "tokenizer file not hash-listed": (manifest_change(lambda m: m["tokenizer"].update(file="manifest.json")), generate,
                                       r"tokenizer\.file 'manifest\.json' must name a file listed under 'files'"),
    "tokenizer that cannot encode": (file_change("tokenizer/tokenizer.json", lambda d: d.replace(b'"[UNK]"', b'"[X]"', 1)),
                                     lambda ws: generate(ws, "zzz"), "the tokenizer failed to encode"),
    "tokenizer eos ids": (manifest_change(lambda m: m["tokenizer"].update(eos_token_ids="0")), generate,
                          "eos_token_ids must be a list of token ids"),
    "a chat template reaching outside its sandbox": (
        manifest_change(lambda m: m["tokenizer"].update(chat_template="{{ ''.__class__.__mro__ }}")),
        lambda ws: apply_chat_template(Bundle.load(ws.path).manifest["tokenizer"], [{"role": "user", "content": "x"}]),
        r"chat template failed \(SecurityError: access to attribute '__class__'"),
    "text with a lone surrogate": (lambda ws: None, lambda ws: generate(ws, "a\ud800b"), "lone surrogate '\\\\ud800' at index 1"),
    "prompt ids that are not integers": (lambda ws: None, lambda ws: generate(ws, [1, 2.5]), "must be integers"),
    "a NaN temperature": (lambda ws: None, lambda ws: generate(ws, temperature=float("nan")), "finite number"),
    "a config of the wrong type": (lambda ws: None, lambda ws: generate(ws, max_new_tokens="3"),
                                   "GenerationConfig.max_new_tokens has the wrong type"),
}


@pytest.mark.parametrize("what", REFUSED)
def test_refused_bundle_names_the_problem(workspace, what):
    setup, call, pattern = REFUSED[what]
    try:
        setup(workspace)
        with pytest.raises(EdgetxError, match=pattern):
            call(workspace)
    finally:
        workspace.restore()


@pytest.mark.parametrize("what", REFUSED_HF)
def test_refused_tokenizer_or_request_names_the_problem(hf_workspace, what):
    setup, call, pattern = REFUSED_HF[what]
    try:
        setup(hf_workspace)
        with pytest.raises(EdgetxError, match=pattern):
            call(hf_workspace)
    finally:
        hf_workspace.restore()


@pytest.mark.parametrize("change, pattern", [
    (lambda f: f["input_ids"].__setitem__((0, 1), 256), r"'input_ids': value 256 at index \(0, 1\) is outside the vocabulary"),
    (lambda f: f["input_ids"].__setitem__((0, 0), -1), r"value -1 at index \(0, 0\) is outside the vocabulary \[0, 256\) \(model\.vocab_size\)"),
    (lambda f: f["position_ids"].__setitem__((0, 2), 300), "'position_ids': value 300 .* outside the model's positions"),
    (lambda f: f["attention_mask"].__setitem__((0, 0), 2), "'attention_mask': value 2 .* outside a mask of 0"),
    (lambda f: f["past_key_values.0.key"].__setitem__((0, 0, 0, 0), np.nan), r"'past_key_values\.0\.key' holds nan"),
    (lambda f: f["past_key_values.1.value"].__setitem__((0, 1, 1, 3), -np.inf), r"holds -inf at index \(0, 1, 1, 3\)"),
    (lambda f: f.update(make_feeds(f["inputs"], 1, CONTEXT - 1, 2, 0)), "covers 257 past\\+seq positions; .* at most 256"),
    (lambda f: f.update(make_feeds(f["inputs"], 1, 0, 2, 0)), r"'input_ids' has shape \[1, 0\]: no tokens"),
])
def test_refused_runtime_input_names_the_problem(session, change, pattern):
    feeds = make_feeds(session.inputs, 1, 3, 2, 0)
    feeds["inputs"] = session.inputs
    change(feeds)
    del feeds["inputs"]
    with pytest.raises(InputError, match=pattern):
        session.run(feeds)


def test_external_data_inside_the_bundle_and_listed_loads_and_runs(workspace):
    """The checks refuse only what they should: listed external data runs like embedded data."""
    want = Session(workspace.path).run(make_feeds(Session(workspace.path).inputs, 1, 4, 0, 1))["logits"]
    try:
        onnx_change(external("w.bin", 0, "w.bin", listed=True))(workspace)
        session = Session(workspace.path)
        np.testing.assert_array_equal(session.run(make_feeds(session.inputs, 1, 4, 0, 1))["logits"], want)
    finally:
        workspace.restore()


def test_onnx_walker_knows_every_string_and_message_field():
    """The wire-format walker's table matches onnx's own descriptors (fails when ONNX adds a field)."""
    import onnx

    from edgetx.bundle.onnx_check import _ONNX_MESSAGES

    skipped = {"DeviceConfigurationProto", "NodeDeviceConfigurationProto", "Segment", "IntIntListEntryProto"}
    for kind, fields in _ONNX_MESSAGES.items():
        descriptor = onnx
        for part in kind.split("."):
            descriptor = getattr(descriptor, part)
        for field in descriptor.DESCRIPTOR.fields:
            sub = field.message_type.full_name.split("onnx.", 1)[1] if field.message_type else ""
            if field.type == field.TYPE_STRING or (sub and sub.split(".")[-1] not in skipped):
                assert fields.get(field.number) == (field.name, sub), (kind, field.name)
            elif field.number in fields and fields[field.number][1] != "":
                pytest.fail(f"{kind}.{field.name} walked as a message but is not one")


@pytest.mark.slow
def test_pickle_that_runs_code_is_refused_even_with_allow_pickle(tmp_path):
    """--allow-pickle loads with torch.load(weights_only=True): a payload that would run code does not."""
    import torch
    import transformers as tf

    from edgetx.build import build
    from hf_models import byte_level_tokenizer, tiny_config

    folder, marker = tmp_path / "evil", tmp_path / "code-ran"
    model = tf.AutoModelForCausalLM.from_config(tiny_config("gpt2"))
    model.config.architectures = ["GPT2LMHeadModel"]
    model.save_pretrained(folder, safe_serialization=False)
    byte_level_tokenizer().save_pretrained(folder)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "payload": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(EdgetxError, match="could not load the weights"):
        build(folder, tmp_path / "b", allow_pickle=True)
    assert not marker.exists(), "unpickling ran the payload's code"
    assert not (tmp_path / "b").exists()
