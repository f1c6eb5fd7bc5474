"""`int4-gptq`: weight-only MatMulNBits whose integer codes are chosen on the bundle's calibration text.

Round-to-nearest (`int4`) rounds every weight on its own. GPTQ (Frantar et al., "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers", 2022) rounds the K input rows of a
[K, N] weight one at a time and moves each row's rounding error onto the rows not rounded yet, in the
proportion the layer's inputs say is least harmful: with H = X^T X from the MatMul's calibration inputs X,
the error of `X @ W` is minimised row by row (Optimal Brain Surgeon's update, through the Cholesky factor of
H^-1, applied lazily per batch of rows). Here:

- H per MatMul input from one fp32 run over the calibration feeds (the inputs exposed as graph outputs,
  edgetx.passes.expose), dampened by 1% of its mean diagonal; inputs that are always zero get weight 0;
- asymmetric blocks of 32 rows with an integer zero point (what onnxruntime's MatMulNBits takes natively),
  each block's scale fitted when GPTQ enters it, from the rows as updated so far; the range may be clipped
  (a few ratios tried per block and column, the input-weighted rounding error decides);
- rows in their own order (no act-order: MatMulNBits blocks are contiguous rows);
- every MatMul's H from the fp32 model (not layer after layer through the quantized ones).

The codes are written as MatMulNBits (`NBitsMatMuls`); MatMuls below the size threshold or excluded stay fp32.
`int4-mixed` writes the MatMuls its gate search promotes as 8-bit GPTQ codes at accuracy_level 4. Hessians are
captured in groups within HESSIAN_BYTES, and they and the codes are remembered for the last source file and
calibration text, since the gate's search quantizes the same graph many times.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetx.errors import EdgetxError
from edgetx.passes.base import GraphPass, PassResult, add_initializer, ir

CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8)  # block ranges tried when fitting a scale (1.0: min/max, as RTN)
HESSIAN_BYTES = 512 * 2**20  # Hessians held at once (float64 K x K each): beyond it, captured in several passes
CACHED_CODES = 50_000_000  # weights whose codes are remembered between trials of one source (1 byte each)
LAZY_ROWS = 128  # rows rounded before their error is pushed onto the rest of the weight (a multiple of the block)


@dataclass
class Codes:
    """One [K, N] weight as MatMulNBits stores it: per output column n and block b of `block` input rows,
    `fl32(scale * (q - zero_point))` (onnxruntime's de-quantization)."""

    bits: int
    block: int
    q: np.ndarray  # uint8 [N, blocks, block], unpacked
    scale: np.ndarray  # float32 [N, blocks]
    zero_point: np.ndarray  # uint8 [N, blocks]

    def dequantize(self) -> np.ndarray:
        """The [K, N] float32 weight the kernel computes with."""
        n, blocks, block = self.q.shape
        body = self.scale[..., None] * (self.q.astype(np.float32) - self.zero_point[..., None].astype(np.float32))
        return body.astype(np.float32).reshape(n, blocks * block).T

    def packed(self) -> np.ndarray:
        """q as MatMulNBits' input B: [N, blocks, block * bits / 8] uint8, low nibble first at 4 bits."""
        return self.q if self.bits == 8 else self.q[..., 0::2] | (self.q[..., 1::2] << 4)

    def packed_zero_points(self) -> np.ndarray:
        """Zero points as MatMulNBits' input: [N, ceil(blocks * bits / 8)] uint8, low nibble first at 4 bits
        (an odd count's unused nibble holds 8, as onnxruntime's quantizer writes it)."""
        if self.bits == 8:
            return self.zero_point
        z = self.zero_point
        if z.shape[1] % 2:
            z = np.concatenate([z, np.full_like(z[:, :1], 8)], axis=1)
        return z[:, 0::2] | (z[:, 1::2] << 4)


def fit_block(w: np.ndarray, bits: int, importance: np.ndarray | None = None,
              ratios: tuple[float, ...] = CLIP_RATIOS) -> tuple[np.ndarray, np.ndarray]:
    """Scale (float32 values, as float64) and integer zero point per column of one block `w` [block, N]:
    the range [min(w, 0), max(w, 0)] shrunk by each of `ratios`, the one with the least rounding error
    (weighted per row by `importance`, e.g. the diagonal of H) kept per column. Ratio 1.0 alone is RTN."""
    top = (1 << bits) - 1
    low, high = np.minimum(w.min(0), 0.0), np.maximum(w.max(0), 0.0)
    rows = np.ones(w.shape[0]) if importance is None else importance
    best_err = np.full(w.shape[1], np.inf)
    best_scale, best_zero = np.ones(w.shape[1]), np.zeros(w.shape[1])
    for ratio in ratios:
        scale = (high - low) * ratio / top
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32).astype(np.float64)
        zero = np.clip(np.rint(-low * ratio / scale), 0, top)
        q = np.clip(np.rint(w / scale) + zero, 0, top)
        err = (np.square(scale * (q - zero) - w) * rows[:, None]).sum(0)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_zero = np.where(better, zero, best_zero)
    return best_scale, best_zero


def _codes(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int, block: int) -> Codes:
    """Codes from row-major results: q [K, N], scales and zero points [blocks, N]."""
    k, n = q.shape
    return Codes(bits, block, np.ascontiguousarray(q.T.reshape(n, k // block, block)).astype(np.uint8),
                 np.ascontiguousarray(scales.T).astype(np.float32), np.ascontiguousarray(zeros.T).astype(np.uint8))


def rtn(weight: np.ndarray, bits: int = 4, block: int = 32, ratios: tuple[float, ...] = (1.0,)) -> Codes:
    """Round-to-nearest codes of a [K, N] weight (with ratios (1.0,), what onnxruntime's int4 quantizer does)."""
    k, n = weight.shape
    w = weight.astype(np.float64).reshape(k // block, block, n)
    top = (1 << bits) - 1
    scales, zeros, q = np.empty((k // block, n)), np.empty((k // block, n)), np.empty_like(w)
    for b in range(k // block):
        scales[b], zeros[b] = fit_block(w[b], bits, ratios=ratios)
        q[b] = np.clip(np.rint(w[b] / scales[b]) + zeros[b], 0, top)
    return _codes(q.reshape(k, n), scales, zeros, bits, block)


def inverse_cholesky(hessian: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), H dampened by `damp` x its mean diagonal; the damping
    grows tenfold until H is positive definite. With J the order reversal and J H J = L L^T, U = J L^-1 J:
    one factorisation and one triangular inverse."""
    mean = float(np.mean(np.diag(hessian)))
    flipped = hessian[::-1, ::-1]
    for attempt in range(6):
        try:
            lower = np.linalg.cholesky(flipped + np.eye(len(flipped)) * damp * (10 ** attempt) * mean)
        except np.linalg.LinAlgError:
            continue
        return np.ascontiguousarray(np.linalg.inv(lower)[::-1, ::-1])
    raise EdgetxError("GPTQ: the calibration inputs' Hessian is not positive definite even dampened "
                      f"{damp * 1e5:g}x its mean diagonal; the calibration feeds may be degenerate")


def revive(hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H (float64 copy) with the diagonal of inputs that are always zero set to 1, and which those are."""
    h = hessian.astype(np.float64, copy=True)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    return h, dead


def gptq(weight: np.ndarray, hessian: np.ndarray, bits: int = 4, block: int = 32, damp: float = 0.01,
         ratios: tuple[float, ...] = CLIP_RATIOS, factor: np.ndarray | None = None) -> Codes:
    """GPTQ codes of a [K, N] weight given H = X^T X [K, K] of its inputs (float64 arithmetic throughout).
    `factor`: inverse_cholesky of the same H (revived), when several weights share it."""
    k, n = weight.shape
    if k % block or LAZY_ROWS % block:
        raise EdgetxError(f"GPTQ: K={k} is not a multiple of the block size {block}")
    w = weight.astype(np.float64).copy()
    h, dead = revive(hessian)
    w[dead] = 0.0  # inputs that never fire: their rows do nothing, quantize them as zero
    importance = np.diag(h).copy()
    u = factor if factor is not None else inverse_cholesky(h, damp)
    top = (1 << bits) - 1
    q = np.empty((k, n))
    scales, zeros = np.empty((k // block, n)), np.empty((k // block, n))
    for start in range(0, k, LAZY_ROWS):
        end = min(start + LAZY_ROWS, k)
        errors = np.empty((end - start, n))
        for i in range(start, end):
            if i % block == 0:
                b = i // block
                scales[b], zeros[b] = fit_block(w[i : i + block], bits, importance[i : i + block], ratios)
            scale, zero = scales[i // block], zeros[i // block]
            q[i] = np.clip(np.rint(w[i] / scale) + zero, 0, top)
            err = (w[i] - scale * (q[i] - zero)) / u[i, i]
            w[i + 1 : end] -= np.outer(u[i, i + 1 : end], err)
            errors[i - start] = err
        w[end:] -= u[start:end, end:].T @ errors
    return _codes(q, scales, zeros, bits, block)


# --- the graph ------------------------------------------------------------------------------------

def matmul_weights(model: ir.Model, names: set[str]) -> dict[str, tuple[ir.Node, np.ndarray]]:
    """The named MatMul-like nodes whose weight is a constant [K, N] matrix (edgetx.quant.grid's reading:
    an initializer, a transposed one, FusedMatMul transB) and that weight, by node name."""
    from edgetx.quant.grid import _weight_kn

    found = {}
    for node in model.graph:
        if node.name in names and (kn := _weight_kn(node, model.graph.initializers)) is not None:
            found[node.name] = (node, kn[0])
    return found


class NBitsMatMuls(GraphPass):
    """The MatMuls named in `codes` replaced by MatMulNBits holding those codes (integer zero points), at
    `accuracy_level` (`levels`: another level for codes of some bit width); the fp32 weights nothing reads any
    more are removed."""

    name = "nbits-matmuls"

    def __init__(self, codes: dict[str, Codes], accuracy_level: int = 0, levels: dict[int, int] | None = None):
        super().__init__()
        self.codes, self.accuracy_level, self.levels = codes, accuracy_level, dict(levels or {})

    def call(self, model: ir.Model) -> PassResult:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        graph = model.graph
        targets = [n for n in graph if n.name in self.codes]
        if not targets:
            return self.skipped(model, "no MatMul to convert")
        replaced = []
        for node in targets:
            c, label = self.codes[node.name], node.name
            n, blocks, block = c.q.shape
            tag = f"int{c.bits}"
            new = ir.node("MatMulNBits", [node.inputs[0], add_initializer(graph, f"{label}.{tag}", c.packed()),
                                          add_initializer(graph, f"{label}.scales", c.scale.reshape(-1)),
                                          add_initializer(graph, f"{label}.zero_points", c.packed_zero_points())],
                          {"K": blocks * block, "N": n, "bits": c.bits, "block_size": block,
                           "accuracy_level": self.levels.get(c.bits, self.accuracy_level)},
                          domain="com.microsoft", name=f"{label}.{tag}",
                          outputs=[ir.val(f"{node.outputs[0].name}.{tag}")])
            graph.insert_before(node, [new])
            replaced.append((node.outputs[0], new.outputs[0]))
        for old, new in replaced:
            new.type, new.shape = old.type, old.shape
            ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        graph.remove(targets, safe=True)
        for old, new in replaced:  # the replacements take the names of the outputs they replace
            new.name = old.name
        RemoveUnusedNodesPass()(model)
        model.opset_imports.setdefault("com.microsoft", 1)
        bits = [c.bits for c in self.codes.values()]
        return self.done(model, converted=len(targets), int4=bits.count(4), int8=bits.count(8))


# --- calibration ----------------------------------------------------------------------------------

class _LastSource:
    """The Hessians and codes last computed, for one source file and one set of feeds: the gate's mixed-precision
    search quantizes the same graph many times (each node alone, then more and more of them), and both depend only
    on the fp32 graph, the calibration text and the settings. One source is kept at a time."""

    key: tuple | None = None
    values: dict[str, np.ndarray] = {}
    codes: dict[tuple, Codes] = {}

    @classmethod
    def lookup(cls, src: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        import hashlib

        digest = hashlib.sha256()
        for feed in feeds:
            for name in sorted(feed):
                array = np.ascontiguousarray(feed[name])
                digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
                digest.update(array.data)
        stat = src.stat()
        key = (str(src.resolve()), stat.st_mtime_ns, stat.st_size, digest.hexdigest())
        if key != cls.key:
            cls.key, cls.values, cls.codes = key, {}, {}
        return cls.values


def input_hessians(src: str | Path, names: list[str], feeds: list[dict[str, np.ndarray]],
                   backend: str | None = None) -> dict[str, np.ndarray]:
    """H = X^T X / rows (float64) of each named value (MatMul inputs, [..., K]) over the calibration
    `feeds`, from one fp32 run each of a copy of `src` that outputs them (values asked before for the same
    file and feeds are remembered)."""
    cache = _LastSource.lookup(Path(src), feeds)
    missing = [name for name in names if name not in cache]
    found = _capture_hessians(src, missing, feeds, backend) if missing else {}
    if sum(h.nbytes for h in (*cache.values(), *found.values())) <= HESSIAN_BYTES:
        cache.update(found)
    return {name: cache[name] if name in cache else found[name] for name in names}


def _capture_hessians(src: str | Path, names: list[str], feeds: list[dict[str, np.ndarray]],
                      backend: str | None = None) -> dict[str, np.ndarray]:
    from edgetx.passes.expose import expose_file
    from edgetx.runtimes.backend import REFERENCE_BACKEND, SessionOptions, get_backend

    sums: dict[str, np.ndarray] = {}
    rows = 0
    with tempfile.TemporaryDirectory(prefix="edgetx-gptq-") as tmp:
        path = expose_file(src, names, Path(tmp) / "m.onnx")
        session = get_backend(backend or REFERENCE_BACKEND).create_session(path, SessionOptions())
        try:
            for feed in feeds:
                out = session.run(feed, names).outputs
                for name in names:
                    x = out[name].reshape(-1, out[name].shape[-1]).astype(np.float64)
                    sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
                rows += len(x)
        finally:
            session.close()
    return {name: h / max(rows, 1) for name, h in sums.items()}


def _chunks(names, widths: dict[str, int]) -> list[list[str]]:
    """`names` in groups whose float64 K x K Hessians together stay within HESSIAN_BYTES (one name at least)."""
    chunks: list[list[str]] = [[]]
    held = 0
    for name in names:
        size = 8 * widths[name] ** 2
        if chunks[-1] and held + size > HESSIAN_BYTES:
            chunks.append([])
            held = 0
        chunks[-1].append(name)
        held += size
    return chunks if chunks[0] else []


def apply_gptq(src: str | Path, dst: str | Path, nodes: list[str], calibration: list[dict[str, np.ndarray]], *,
               bits: int = 4, block_size: int = 32, accuracy_level: int = 0, damp: float = 0.01,
               clip: bool = True, symmetric: bool = False, promote: list[str] | None = None, promote_bits: int = 8,
               promote_accuracy_level: int = 4) -> dict:
    """Write `src` to `dst` with the MatMuls named in `nodes` as GPTQ MatMulNBits calibrated on `calibration`;
    those also in `promote` at `promote_bits` and `promote_accuracy_level` (int4-mixed). A node whose K is not a
    multiple of `block_size` stays fp32. Returns the pass's record."""
    if symmetric:
        raise EdgetxError("GPTQ writes asymmetric blocks with integer zero points; a scheme's option "
                          "`symmetric` must be False")
    from edgetx.passes.base import run
    from edgetx.passes.files import load, release, save

    model = load(src)
    found = matmul_weights(model, set(nodes))
    found = {name: (node, w) for name, (node, w) in found.items() if w.shape[0] % block_size == 0}
    ratios = CLIP_RATIOS if clip else (1.0,)
    wider = set(promote or ())
    readers: dict[str, list[str]] = {}  # MatMul input -> the nodes that read it (q/k/v share one H)
    for name, (node, _) in found.items():
        readers.setdefault(node.inputs[0].name, []).append(name)
    _LastSource.lookup(Path(src), calibration)  # the codes remembered are those of this file and these feeds
    codes = {}
    for chunk in _chunks(readers, {x: found[names[0]][1].shape[0] for x, names in readers.items()}):
        settings = {name: (name, promote_bits if name in wider else bits, block_size, damp, ratios)
                    for x in chunk for name in readers[x]}
        codes.update({name: _LastSource.codes[s] for name, s in settings.items() if s in _LastSource.codes})
        todo = [x for x in chunk if any(name not in codes for name in readers[x])]
        hessians = input_hessians(src, todo, calibration) if todo else {}
        for x in todo:
            factor = inverse_cholesky(revive(hessians[x])[0], damp)
            for name in readers[x]:
                if name not in codes:
                    codes[name] = gptq(found[name][1], hessians[x], *settings[name][1:], factor=factor)
                    if sum(c.q.size for c in _LastSource.codes.values()) + codes[name].q.size <= CACHED_CODES:
                        _LastSource.codes[settings[name]] = codes[name]
        del hessians
    levels = {promote_bits: promote_accuracy_level} if wider else {}
    model, (record,) = run(model, [NBitsMatMuls(codes, accuracy_level, levels)])
    save(model, dst)
    release(model)
    return record
