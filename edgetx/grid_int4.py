"""`int4-grid`: exact int4 for weights that already sit on a 4-bit block grid.

Weights de-quantized from a GGUF Q4_0/Q4_1 file keep their grid: every block of 32 input values
is `offset + step * q` with q in 0..15. Re-quantizing them with round-to-nearest and an integer
zero point (onnxruntime's MatMulNBits quantizer) moves them off that grid; on SmolLM2-135M that
costs mean KL 0.37 and top-1 0.65 (onnxruntime-genai's builder does no better). Here each such
MatMul is written so that it reproduces the weights exactly:

    x @ W = MatMulNBits(x, q, step)            # symmetric 4-bit: step * (q - 8), the fast kernel
          + MatMul(blocksum(x), offset + 8*step)   # one small fp32 MatMul over the 32-wide block sums

The per-block offsets cannot be a MatMulNBits zero point: those are integers (and the float
zero-point path measured 4x slower than fp32). MatMuls whose weights are not on a grid (e.g. a
tied lm_head kept at higher precision in the GGUF) stay fp32, so on a model trained in float the
scheme changes nothing and says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetx.errors import EdgetxError

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


def apply_grid(src: str | Path, dst: str | Path, exclude: list[str] | None = None) -> int:
    """Write `src` with every on-grid weight MatMul (not in `exclude`) as exact int4; return how many."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    skip = set(exclude or [])
    nodes, block_sums, converted = [], {}, 0
    axis_name = "edgetx_grid_last_axis"
    for node in graph.node:
        weight = None
        if node.op_type == "MatMul" and node.name not in skip and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
        found = grid(weight) if weight is not None and weight.ndim == 2 and weight.size >= MIN_ELEMENTS else None
        if found is None:
            nodes.append(node)
            continue
        q, step, low = found
        k, n = weight.shape
        name, x, y = node.input[1], node.input[0], node.output[0]
        packed = q[..., 0::2] | (q[..., 1::2] << 4)  # two 4-bit values per byte, low nibble first
        offset = (low + 8 * step).T.astype(np.float32)  # [blocks, N]: what step * (q - 8) leaves out
        graph.initializer.extend([numpy_helper.from_array(packed.astype(np.uint8), f"{name}.int4"),
                                  numpy_helper.from_array(step.astype(np.float32), f"{name}.step"),
                                  numpy_helper.from_array(offset, f"{name}.offset")])
        if (x, k) not in block_sums:  # q, k and v projections share one block sum of their input
            shape = f"{x}.block_shape"
            graph.initializer.append(numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], np.int64), shape))
            nodes += [helper.make_node("Reshape", [x, shape], [f"{x}.blocks"], name=f"{x}.blocks"),
                      helper.make_node("ReduceSum", [f"{x}.blocks", axis_name], [f"{x}.block_sums"], keepdims=0,
                                       name=f"{x}.block_sums")]
            block_sums[(x, k)] = f"{x}.block_sums"
        nodes += [helper.make_node("MatMulNBits", [x, f"{name}.int4", f"{name}.step"], [f"{y}.grid"],
                                   name=f"{node.name}.int4", domain="com.microsoft", K=k, N=n, bits=4,
                                   block_size=BLOCK, accuracy_level=0),
                  helper.make_node("MatMul", [block_sums[(x, k)], f"{name}.offset"], [f"{y}.offset"],
                                   name=f"{node.name}.offset"),
                  helper.make_node("Add", [f"{y}.grid", f"{y}.offset"], [y], name=f"{node.name}.add")]
        converted += 1
    if not converted:
        raise EdgetxError(f"int4-grid: no weight MatMul of {Path(src).name} sits on a 4-bit block grid (the scheme "
                          "is for models de-quantized from GGUF Q4_0/Q4_1); use int4 for float-trained weights")
    graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), axis_name))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(dst))
    return converted
