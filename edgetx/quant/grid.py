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
from edgetx.passes.cpu_kernels import drop_dead

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


def _weight_kn(node, initializers: dict, producers: dict) -> tuple[np.ndarray, str] | None:
    """The constant [K, N] weight of a MatMul-like node and the initializer it comes from: MatMul on an
    initializer or on Transpose(initializer) (a tied lm_head), FusedMatMul with transB on one."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    name = node.input[1] if len(node.input) > 1 else ""
    transposed = False
    if node.op_type == "FusedMatMul":
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("transA", 0) or attrs.get("transBatchA", 0) \
                or attrs.get("transBatchB", 0):
            return None
        transposed = bool(attrs.get("transB", 0))
    elif node.op_type != "MatMul":
        return None
    if name not in initializers:
        producer = producers.get(name)
        perm = [helper.get_attribute_value(a) for a in producer.attribute if a.name == "perm"] if producer else []
        if producer is None or producer.op_type != "Transpose" or producer.input[0] not in initializers \
                or perm not in ([], [[1, 0]]):
            return None
        name, transposed = producer.input[0], not transposed
    weight = numpy_helper.to_array(initializers[name])
    if weight.ndim != 2 or weight.size < MIN_ELEMENTS:
        return None
    return (np.ascontiguousarray(weight.T) if transposed else weight), name


def _split(inputs: list[str], outputs: list[str], sizes: list[int], name: str, opset: int, graph) -> list:
    """Split the last axis of one tensor back into the outputs of the MatMuls that were packed."""
    from onnx import helper, numpy_helper

    if len(outputs) == 1:
        return [helper.make_node("Identity", inputs, outputs, name=name)]
    if opset >= 13:
        graph.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), f"{name}.sizes"))
        return [helper.make_node("Split", [*inputs, f"{name}.sizes"], outputs, axis=-1, name=name)]
    return [helper.make_node("Split", inputs, outputs, axis=-1, split=sizes, name=name)]


def apply_grid(src: str | Path, dst: str | Path, exclude: list[str] | None = None, accuracy_level: int = 0) -> int:
    """Write `src` with every on-grid weight MatMul (not in `exclude`) as exact low-bit; return how many.

    4-bit grid weights that read the same input (q/k/v, gate/up) become one packed MatMulNBits and a
    Split: fewer, larger kernel calls. With `accuracy_level` 4 (int8 activations) a weight on the Q8_0
    grid (the tied lm_head of a Q4 GGUF) becomes an exact 8-bit MatMulNBits; at level 0 it stays fp32,
    because onnxruntime's 8-bit kernel without int8 compute runs several times slower than fp32 (a
    SmolLM2-135M decode step: 130 ms against 40).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    initializers = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    skip = set(exclude or [])
    plans: dict[str, tuple] = {}  # node name -> ("int4", x, q, step, low) | ("int8", x, q, scale)
    groups: dict[tuple[str, int], list] = {}  # (input, K) -> int4 nodes reading it, in graph order
    for node in graph.node:
        found = _weight_kn(node, initializers, producers) if node.name not in skip else None
        if found is None:
            continue
        weight, source = found
        four = grid(weight)
        if four is not None:
            plans[node.name] = ("int4", source, *four)
            groups.setdefault((node.input[0], weight.shape[0]), []).append(node)
        elif accuracy_level == 4 and (eight := grid_q8_0(weight)) is not None:
            plans[node.name] = ("int8", source, *eight)
    if not any(plan[0] == "int4" for plan in plans.values()):
        raise EdgetxError(f"int4-grid: no weight MatMul of {Path(src).name} sits on a 4-bit block grid (the scheme "
                          "is for models de-quantized from GGUF Q4_0/Q4_1); use int4 for float-trained weights")
    axis_name = "edgetx_grid_last_axis"
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axis_name))
    nodes, block_sums, done = [], {}, set()
    for node in graph.node:
        plan = plans.get(node.name)
        if plan is None:
            nodes.append(node)
            continue
        if node.name in done:
            continue
        x = node.input[0]
        if plan[0] == "int8":
            _, source, q, scale = plan
            n, blocks, _ = q.shape
            graph.initializer.extend([numpy_helper.from_array(q, f"{source}.int8"),
                                      numpy_helper.from_array(scale.astype(np.float32).reshape(-1), f"{source}.scale")])
            nodes.append(helper.make_node("MatMulNBits", [x, f"{source}.int8", f"{source}.scale"], list(node.output),
                                          name=f"{node.name}.int8", domain="com.microsoft", K=blocks * BLOCK, N=n,
                                          bits=8, block_size=BLOCK, accuracy_level=accuracy_level))
            done.add(node.name)
            continue
        members = groups[(x, plan[2].shape[1] * BLOCK)]
        done.update(m.name for m in members)
        k = plan[2].shape[1] * BLOCK
        qs, steps, offsets, sizes = [], [], [], []
        for m in members:
            _, _, q, step, low = plans[m.name]
            qs.append(q[..., 0::2] | (q[..., 1::2] << 4))  # two 4-bit values per byte, low nibble first
            steps.append(step)
            offsets.append((low + 8 * step).T)  # [blocks, N]: what step * (q - 8) leaves out
            sizes.append(q.shape[0])
        name = node.name if len(members) == 1 else f"{node.name}.packed"
        y = f"{node.output[0]}.grid{len(members)}"
        graph.initializer.extend([
            numpy_helper.from_array(np.concatenate(qs).astype(np.uint8), f"{name}.int4"),
            numpy_helper.from_array(np.concatenate(steps).astype(np.float32), f"{name}.step"),
            numpy_helper.from_array(np.concatenate(offsets, axis=1).astype(np.float32), f"{name}.offset")])
        if (x, k) not in block_sums:
            shape = f"{x}.block_shape"
            graph.initializer.append(numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], np.int64), shape))
            nodes += [helper.make_node("Reshape", [x, shape], [f"{x}.blocks"], name=f"{x}.blocks"),
                      helper.make_node("ReduceSum", [f"{x}.blocks", axis_name], [f"{x}.block_sums"], keepdims=0,
                                       name=f"{x}.block_sums")]
            block_sums[(x, k)] = f"{x}.block_sums"
        nodes += [helper.make_node("MatMulNBits", [x, f"{name}.int4", f"{name}.step"], [f"{y}.int4"],
                                   name=f"{name}.int4", domain="com.microsoft", K=k, N=sum(sizes), bits=4,
                                   block_size=BLOCK, accuracy_level=accuracy_level),
                  helper.make_node("MatMul", [block_sums[(x, k)], f"{name}.offset"], [f"{y}.offset"],
                                   name=f"{name}.offset"),
                  helper.make_node("Add", [f"{y}.int4", f"{y}.offset"], [y], name=f"{name}.add"),
                  *_split([y], [m.output[0] for m in members], sizes, f"{name}.split", opset, graph)]
    del graph.node[:]
    graph.node.extend(nodes)
    drop_dead(graph)  # the Transpose that fed a tied lm_head, and the fp32 weights replaced
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return len(plans)

