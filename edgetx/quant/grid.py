"""`int4-grid` / `int8-grid`: exact low-bit weights for weights that already sit on a block grid.

Weights de-quantized from a GGUF file keep their grid: every block of 32 (Q6_K: 16) input values is
`offset + scale * q` with integer q (edgetx.quant.grid_fit says which grid each GGUF type gives).
Re-quantizing them with round-to-nearest and an integer zero point (onnxruntime's MatMulNBits quantizer)
moves them off that grid; on SmolLM2-135M (Q4_1) that costs mean KL 0.37 and top-1 0.65
(onnxruntime-genai's builder does no better). Here each such MatMul is written so that it reproduces the
weights exactly:

    x @ W = MatMulNBits(x, q, scale)          # scale * (q - 8) at 4 bits, scale * (q - 128) at 8
          + MatMul(blocksum(x), offset)       # asymmetric grids only: one small fp32 MatMul over block sums

The per-block offsets cannot be a MatMulNBits zero point: those are integers (the float
zero-point path measured 4x slower than fp32, and 55x slower per call than the integer path at
int8 compute). Symmetric grids (Q4_0, Q5_0, Q6_K, Q8_0) need no offset. `int4-grid` converts 4-bit
grids; `int4-grid-a8` adds 8-bit grids (a Q8_0 tied lm_head) at accuracy_level 4; `int8-grid` converts
every grid at accuracy_level 0 (exact and bit for bit; onnxruntime's 8-bit kernel is slow there) and
`int8-grid-a8` the same at level 4. Off-grid weights stay fp32, so on a model trained in float the
schemes change nothing and say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetx.errors import EdgetxError
from edgetx.passes.base import GraphPass, add_initializer, default_opset, ir
from edgetx.quant.grid_fit import Fit, fit

BLOCK = 32
MIN_ELEMENTS = 4096


def weight_fit(weight: np.ndarray, bits: tuple[int, ...] = (4, 8)) -> Fit | None:
    """The grid a [K, N] weight sits on: 4-bit blocks of 32 first, then 8-bit blocks of 32, then of 16
    (Q6_K's sub-blocks), among `bits`; None when it sits on none (float-trained or F16 weights)."""
    for width, block in ((4, 32), (8, 32), (8, 16)):
        if width in bits and (found := fit(weight, width, block)) is not None:
            return found
    return None


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

    Weights on a 4-bit grid (Q4_0, Q4_1, Q4_K) become 4-bit MatMulNBits; with 8 in `bits`, weights on an
    8-bit grid (Q5_0, Q5_1, Q5_K, Q6_K, Q8_0) become 8-bit MatMulNBits. Grid weights that read the same
    input (q/k/v, gate/up) with the same bits and block become one MatMulNBits and a Split: fewer, larger
    kernel calls. Blocks with an offset (asymmetric grids) add one small fp32 MatMul over the input's block
    sums. onnxruntime's 8-bit kernel without int8 compute runs several times slower than fp32 (a SmolLM2-135M
    decode step: 130 ms against 40), so int4-grid leaves 8-bit grids in fp32 and int4-grid-a8 / int8-grid-a8
    take them at accuracy_level 4. No weight on a grid of `needs` bits (4: a 4-bit one; 8: an 8-bit one
    that is not also 4-bit) raises EdgetxError.
    """

    name = "int4-grid"

    def __init__(self, exclude: list[str] | None = None, accuracy_level: int = 0, bits: tuple[int, ...] = (4,),
                 needs: int = 4):
        super().__init__()
        self.name = "int4-grid" if needs == 4 else "int8-grid"
        self.exclude = set(exclude or [])
        self.accuracy_level = accuracy_level
        self.bits = tuple(bits)
        self.needs = needs

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        graph = model.graph
        opset = default_opset(model, 13)
        initializers = graph.initializers
        plans: dict[ir.Node, tuple[ir.Value, Fit]] = {}
        groups: dict[tuple, list[ir.Node]] = {}  # (input, K, bits, block) -> nodes reading it, in order
        for node in graph:
            found = _weight_kn(node, initializers) if node.name not in self.exclude else None
            if found is None:
                continue
            weight, source = found
            if (grid := weight_fit(weight, self.bits)) is not None:
                plans[node] = (source, grid)
                groups.setdefault((node.inputs[0], weight.shape[0], grid.bits, grid.block), []).append(node)
        if not any(g.bits == self.needs for _, g in plans.values()):
            kind = "a 4-bit block grid (the scheme is for models de-quantized from GGUF Q4_0/Q4_1/Q4_K)" \
                if self.needs == 4 else "an 8-bit block grid that is not a 4-bit one (GGUF Q5_0/Q5_1/Q5_K/" \
                                           "Q6_K/Q8_0 weights)"
            raise EdgetxError(f"{self.name}: no weight MatMul of the model sits on {kind}; use int4 or "
                              "int8-weight-only for float-trained weights")
        made: dict[str, ir.Value] = {}

        def constant(name: str, array: np.ndarray) -> ir.Value:
            """A new initializer; one already made under `name` (same input, same contents) is reused."""
            if name not in made:
                made[name] = add_initializer(graph, name, np.ascontiguousarray(array))
            return made[name]

        block_sums: dict[tuple[ir.Value, int, int], ir.Value] = {}
        done: set[ir.Node] = set()
        replaced: list[tuple[ir.Value, ir.Value]] = []  # (old output, new output that takes its place)
        for node in list(graph):
            if node not in plans or node in done:
                continue
            x, label = node.inputs[0], node.name or node.outputs[0].name
            first = plans[node][1]
            k = first.q.shape[1] * first.block
            members = groups[(x, k, first.bits, first.block)]
            done.update(members)
            fits = [plans[m][1] for m in members]
            sizes = [f.q.shape[0] for f in fits]
            tag = f"int{first.bits}"
            name = label if len(members) == 1 else f"{label}.packed"
            y = f"{node.outputs[0].name}.grid{len(members)}"
            nbits = ir.node("MatMulNBits", [x, constant(f"{name}.{tag}", np.concatenate([f.packed() for f in fits])),
                                            constant(f"{name}.scale", np.concatenate([f.scale for f in fits]).reshape(-1))],
                            {"K": k, "N": sum(sizes), "bits": first.bits, "block_size": first.block,
                             "accuracy_level": self.accuracy_level},
                            domain="com.microsoft", name=f"{name}.{tag}", outputs=[ir.val(f"{y}.{tag}")])
            new_nodes = [nbits]
            out = nbits.outputs[0]
            if any(f.offset is not None for f in fits):
                offsets = np.concatenate([(f.offset if f.offset is not None else np.zeros_like(f.scale)).T
                                          for f in fits], axis=1)  # [blocks, N]
                sums = self._block_sums(x, k, first.block, block_sums, new_nodes, opset, constant)
                offset = ir.node("MatMul", [sums, constant(f"{name}.offset", offsets.astype(np.float32))],
                                 name=f"{name}.offset", outputs=[ir.val(f"{y}.offset")])
                add = ir.node("Add", [out, offset.outputs[0]], name=f"{name}.add", outputs=[ir.val(y)])
                new_nodes += [offset, add]
                out = add.outputs[0]
            split = self._split(out, len(members), sizes, f"{name}.split", opset, constant)
            graph.insert_before(node, new_nodes + [split])
            replaced += zip((m.outputs[0] for m in members), split.outputs)
        for old, new in replaced:
            new.type, new.shape = old.type, old.shape
            ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        graph.remove(list(done), safe=True)
        for old, new in replaced:  # the replacements take the names of the outputs they replace
            new.name = old.name
        RemoveUnusedNodesPass()(model)  # the Transpose that fed a tied lm_head, and the fp32 weights replaced
        model.opset_imports.setdefault("com.microsoft", 1)
        fits = [g for _, g in plans.values()]
        return self.done(model, converted=len(plans), int4=sum(g.bits == 4 for g in fits),
                         int8=sum(g.bits == 8 for g in fits), kernels=len(groups),
                         bit_exact=sum(g.exact for g in fits), with_offsets=sum(g.offset is not None for g in fits),
                         not_bit_exact=sorted(plans[n][0].name for n in plans if not plans[n][1].exact))

    @staticmethod
    def _block_sums(x: ir.Value, k: int, block: int, cache: dict, new_nodes: list, opset: int, constant) -> ir.Value:
        """x summed over each block of `block` inputs: [..., K / block] (made once per input and block)."""
        if (x, k, block) in cache:
            return cache[(x, k, block)]
        tag = f"{x.name}.blocks{block}"
        shape = constant(f"{tag}.shape", np.array([0, 0, k // block, block], np.int64))
        reshape = ir.node("Reshape", [x, shape], name=tag, outputs=[ir.val(tag)])
        if opset >= 13:  # axes became an input at opset 13
            axes = [constant("edgetx_grid_last_axis", np.array([-1], np.int64))], {"keepdims": 0}
        else:
            axes = [], {"keepdims": 0, "axes": [-1]}
        reduce = ir.node("ReduceSum", [reshape.outputs[0], *axes[0]], axes[1], name=f"{tag}.sums",
                         outputs=[ir.val(f"{tag}.sums")])
        new_nodes += [reshape, reduce]
        cache[(x, k, block)] = reduce.outputs[0]
        return reduce.outputs[0]

    @staticmethod
    def _split(y: ir.Value, count: int, sizes: list[int], name: str, opset: int, constant) -> ir.Node:
        """Split the last axis of one tensor back into the outputs of the MatMuls that were packed."""
        if count == 1:
            return ir.node("Identity", [y], name=name)
        if opset >= 13:
            return ir.node("Split", [y, constant(f"{name}.sizes", np.array(sizes, np.int64))], {"axis": -1},
                           num_outputs=count, name=name)
        return ir.node("Split", [y], {"axis": -1, "split": sizes}, num_outputs=count, name=name)


def apply_grid(src: str | Path, dst: str | Path, exclude: list[str] | None = None, accuracy_level: int = 0,
               bits: tuple[int, ...] | None = None, needs: int = 4) -> int:
    """Write `src` with every on-grid weight MatMul (not in `exclude`) as exact low-bit (`GridInt4`);
    return how many. `bits` (default: 4, and 8 too at accuracy_level 4) says which grids are converted.
    Raises EdgetxError, writing nothing, when no weight sits on a grid of `needs` bits."""
    from edgetx.passes.files import transform_file

    bits = bits if bits is not None else ((4, 8) if accuracy_level == 4 else (4,))
    (record,) = transform_file(src, dst, [GridInt4(exclude, accuracy_level, bits, needs)])
    return record["converted"]
