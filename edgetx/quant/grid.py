"""`int4-grid`: exact int4 for weights that already sit on a 4-bit block grid.

Weights de-quantized from a GGUF Q4_0/Q4_1 file keep their grid: every block of 32 input values
is `offset + step * q` with q in 0..15. Re-quantizing them with round-to-nearest and an integer
zero point (onnxruntime's MatMulNBits quantizer) moves them off that grid; on SmolLM2-135M that
costs mean KL 0.37 and top-1 0.65 (onnxruntime-genai's builder does no better). Here each such
MatMul is written so that it reproduces the weights exactly:

    x @ W = MatMulNBits(x, q, step)            # symmetric 4-bit: step * (q - 8), the fast kernel
          + MatMul(blocksum(x), offset + 8*step)   # one small fp32 MatMul over the 32-wide block sums

The per-block offsets cannot be a MatMulNBits zero point: those are integers (the float
zero-point path measured 4x slower than fp32, and 55x slower per call than the integer path at
int8 compute). A tied lm_head that the GGUF keeps as Q8_0 becomes an exact 8-bit MatMulNBits at
accuracy_level 4 (`int4-grid-a8`); other off-grid weights stay fp32, so on a model trained in float
the scheme changes nothing and says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetx.errors import EdgetxError
from edgetx.passes.base import GraphPass, add_initializer, default_opset, ir

BLOCK = 32
LEVELS = 16
MIN_ELEMENTS = 4096


def grid(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(q uint8 [N, blocks, 32], step [N, blocks], low [N, blocks]) when every block of 32 values
    along K of `weight` [K, N] is low + step * q with integer q in 0..15; else None."""
    k, n = weight.shape
    if k % BLOCK:
        return None
    blocks = weight.T.reshape(n, k // BLOCK, BLOCK).astype(np.float64)
    low, high = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    gaps = np.diff(np.sort(blocks, -1), axis=-1)
    distinct = gaps > 1e-6 * np.maximum(high - low, 1e-30)
    step = np.where(distinct, gaps, np.inf).min(-1, keepdims=True)  # a grid's smallest gap is its step
    step = np.where(np.isfinite(step), step, 1.0)  # a constant block: any step
    levels = (blocks - low) / step
    if np.abs(levels - np.rint(levels)).max() > 1e-2 or levels.max() > LEVELS - 1 + 1e-2:
        return None
    return np.rint(levels).astype(np.uint8), step[..., 0], low[..., 0]


def grid_q8_0(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(q uint8 [N, blocks, 32] holding q + 128, scale [N, blocks]) when every block of 32 values along
    K of `weight` [K, N] is scale * q with integer q in -127..127 and scale = max|block| / 127 (GGUF
    Q8_0, the usual type of a tied embedding / lm_head); else None."""
    k, n = weight.shape
    if k % BLOCK:
        return None
    blocks = weight.T.reshape(n, k // BLOCK, BLOCK).astype(np.float64)
    scale = np.abs(blocks).max(-1, keepdims=True) / 127
    scale = np.where(scale > 0, scale, 1.0)
    q = blocks / scale
    if np.abs(q - np.rint(q)).max() > 1e-3:
        return None
    return (np.rint(q) + 128).astype(np.uint8), scale[..., 0]


def _weight_kn(node: ir.Node, initializers) -> tuple[np.ndarray, ir.Value] | None:
    """The constant [K, N] weight of a MatMul-like node and the initializer it comes from: MatMul on an
    initializer or on Transpose(initializer) (a tied lm_head), FusedMatMul with transB on one."""
    attrs = node.attributes
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    transposed = False
    if node.op_type == "FusedMatMul":
        if attrs.get_float("alpha", 1.0) != 1.0 or attrs.get_int("transA", 0) or attrs.get_int("transBatchA", 0) \
                or attrs.get_int("transBatchB", 0):
            return None
        transposed = bool(attrs.get_int("transB", 0))
    elif node.op_type != "MatMul":
        return None
    if weight is None:
        return None
    if not _is_initializer(weight, initializers):
        producer = weight.producer()
        perm = producer.attributes.get_ints("perm") if producer is not None else None
        if producer is None or producer.op_type != "Transpose" or not producer.inputs \
                or not _is_initializer(producer.inputs[0], initializers) or perm not in (None, [1, 0], (1, 0)):
            return None
        weight, transposed = producer.inputs[0], not transposed
    array = weight.const_value.numpy()
    if array.ndim != 2 or array.size < MIN_ELEMENTS:
        return None
    return (np.ascontiguousarray(array.T) if transposed else array), weight


def _is_initializer(value: ir.Value | None, initializers) -> bool:
    return value is not None and value.name in initializers and initializers[value.name] is value \
        and value.const_value is not None


class GridInt4(GraphPass):
    """Every on-grid weight MatMul (not in `exclude`) as exact low-bit; `converted` says how many.

    4-bit grid weights that read the same input (q/k/v, gate/up) become one packed MatMulNBits and a
    Split: fewer, larger kernel calls. With `accuracy_level` 4 (int8 activations) a weight on the Q8_0
    grid (the tied lm_head of a Q4 GGUF) becomes an exact 8-bit MatMulNBits; at level 0 it stays fp32,
    because onnxruntime's 8-bit kernel without int8 compute runs several times slower than fp32 (a
    SmolLM2-135M decode step: 130 ms against 40). No weight on a 4-bit grid raises EdgetxError.
    """

    name = "int4-grid"

    def __init__(self, exclude: list[str] | None = None, accuracy_level: int = 0):
        super().__init__()
        self.exclude = set(exclude or [])
        self.accuracy_level = accuracy_level

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        graph = model.graph
        opset = default_opset(model, 13)
        initializers = graph.initializers
        plans: dict[ir.Node, tuple] = {}  # node -> ("int4", source, q, step, low) | ("int8", source, q, scale)
        groups: dict[tuple[ir.Value, int], list[ir.Node]] = {}  # (input, K) -> int4 nodes reading it, in order
        for node in graph:
            found = _weight_kn(node, initializers) if node.name not in self.exclude else None
            if found is None:
                continue
            weight, source = found
            four = grid(weight)
            if four is not None:
                plans[node] = ("int4", source, *four)
                groups.setdefault((node.inputs[0], weight.shape[0]), []).append(node)
            elif self.accuracy_level == 4 and (eight := grid_q8_0(weight)) is not None:
                plans[node] = ("int8", source, *eight)
        if not any(plan[0] == "int4" for plan in plans.values()):
            raise EdgetxError("int4-grid: no weight MatMul of the model sits on a 4-bit block "
                              "grid (the scheme is for models de-quantized from GGUF Q4_0/Q4_1); use int4 for "
                              "float-trained weights")
        made: dict[str, ir.Value] = {}

        def constant(name: str, array: np.ndarray) -> ir.Value:
            """A new initializer; one already made under `name` (same input, same contents) is reused."""
            if name not in made:
                made[name] = add_initializer(graph, name, np.ascontiguousarray(array))
            return made[name]

        block_sums: dict[tuple[ir.Value, int], ir.Value] = {}
        done: set[ir.Node] = set()
        replaced: list[tuple[ir.Value, ir.Value]] = []  # (old output, new output that takes its place)
        for node in list(graph):
            plan = plans.get(node)
            if plan is None or node in done:
                continue
            x, label = node.inputs[0], node.name or node.outputs[0].name
            if plan[0] == "int8":
                _, source, q, scale = plan
                n, blocks, _ = q.shape
                new = ir.node("MatMulNBits", [x, constant(f"{source.name}.int8", q),
                                              constant(f"{source.name}.scale", scale.astype(np.float32).reshape(-1))],
                              {"K": blocks * BLOCK, "N": n, "bits": 8, "block_size": BLOCK,
                               "accuracy_level": self.accuracy_level},
                              domain="com.microsoft", num_outputs=len(node.outputs), name=f"{label}.int8")
                graph.insert_before(node, new)
                replaced += zip(node.outputs, new.outputs)
                done.add(node)
                continue
            k = plan[2].shape[1] * BLOCK
            members = groups[(x, k)]
            done.update(members)
            qs, steps, offsets, sizes = [], [], [], []
            for m in members:
                _, _, q, step, low = plans[m]
                qs.append(q[..., 0::2] | (q[..., 1::2] << 4))  # two 4-bit values per byte, low nibble first
                steps.append(step)
                offsets.append((low + 8 * step).T)  # [blocks, N]: what step * (q - 8) leaves out
                sizes.append(q.shape[0])
            name = label if len(members) == 1 else f"{label}.packed"
            y = f"{node.outputs[0].name}.grid{len(members)}"
            new_nodes = []
            if (x, k) not in block_sums:
                shape = constant(f"{x.name}.block_shape", np.array([0, 0, k // BLOCK, BLOCK], np.int64))
                reshape = ir.node("Reshape", [x, shape], name=f"{x.name}.blocks", outputs=[ir.val(f"{x.name}.blocks")])
                if opset >= 13:  # axes became an input at opset 13
                    axes = [constant("edgetx_grid_last_axis", np.array([-1], np.int64))], {"keepdims": 0}
                else:
                    axes = [], {"keepdims": 0, "axes": [-1]}
                reduce = ir.node("ReduceSum", [reshape.outputs[0], *axes[0]], axes[1], name=f"{x.name}.block_sums",
                                 outputs=[ir.val(f"{x.name}.block_sums")])
                new_nodes += [reshape, reduce]
                block_sums[(x, k)] = reduce.outputs[0]
            nbits = ir.node("MatMulNBits", [x, constant(f"{name}.int4", np.concatenate(qs).astype(np.uint8)),
                                            constant(f"{name}.step", np.concatenate(steps).astype(np.float32))],
                            {"K": k, "N": sum(sizes), "bits": 4, "block_size": BLOCK,
                             "accuracy_level": self.accuracy_level},
                            domain="com.microsoft", name=f"{name}.int4", outputs=[ir.val(f"{y}.int4")])
            offset = ir.node("MatMul", [block_sums[(x, k)],
                                        constant(f"{name}.offset", np.concatenate(offsets, axis=1).astype(np.float32))],
                             name=f"{name}.offset", outputs=[ir.val(f"{y}.offset")])
            add = ir.node("Add", [nbits.outputs[0], offset.outputs[0]], name=f"{name}.add", outputs=[ir.val(y)])
            split = self._split(add.outputs[0], len(members), sizes, f"{name}.split", opset, constant)
            new_nodes += [nbits, offset, add, split]
            graph.insert_before(node, new_nodes)
            replaced += zip((m.outputs[0] for m in members), split.outputs)
        for old, new in replaced:
            new.type, new.shape = old.type, old.shape
            ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        graph.remove(list(done), safe=True)
        for old, new in replaced:  # the replacements take the names of the outputs they replace
            new.name = old.name
        RemoveUnusedNodesPass()(model)  # the Transpose that fed a tied lm_head, and the fp32 weights replaced
        model.opset_imports.setdefault("com.microsoft", 1)
        kinds = [plan[0] for plan in plans.values()]
        return self.done(model, converted=len(plans), int4=kinds.count("int4"), int8=kinds.count("int8"),
                         int4_kernels=len(groups))

    @staticmethod
    def _split(y: ir.Value, count: int, sizes: list[int], name: str, opset: int, constant) -> ir.Node:
        """Split the last axis of one tensor back into the outputs of the MatMuls that were packed."""
        if count == 1:
            return ir.node("Identity", [y], name=name)
        if opset >= 13:
            return ir.node("Split", [y, constant(f"{name}.sizes", np.array(sizes, np.int64))], {"axis": -1},
                           num_outputs=count, name=name)
        return ir.node("Split", [y], {"axis": -1, "split": sizes}, num_outputs=count, name=name)


def apply_grid(src: str | Path, dst: str | Path, exclude: list[str] | None = None, accuracy_level: int = 0) -> int:
    """Write `src` with every on-grid weight MatMul (not in `exclude`) as exact low-bit (`GridInt4`);
    return how many. Raises EdgetxError, writing nothing, when no weight sits on a 4-bit grid."""
    from edgetx.passes.files import transform_file

    (record,) = transform_file(src, dst, [GridInt4(exclude, accuracy_level)])
    return record["converted"]
