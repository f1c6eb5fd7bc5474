"""Graph remedies for backends that compute in low precision or quantize activations.

`finite_masks`: attention masks built with -inf or the float32 minimum (-3.4e38, what
`torch.finfo(dtype).min` gives) break NPU paths: in fp16 -3.4e38 is -inf and 0 * -inf is NaN, and
static QDQ calibration of a tensor holding it gives an infinite scale. A large negative finite value
(-1e4, as the reference GPT uses) masks just as well: exp(-1e4 - max) is exactly 0 in fp32 and fp16.
The replacement is safe, and callers check the result against the original graph anyway.
"""

from __future__ import annotations

import numpy as np

MASK_VALUE = -1e4
HUGE_NEGATIVE = -1e30  # float constants at or below this (or -inf) are mask fill values


def mask_constants(model) -> list[tuple[str, float]]:
    """(where, value) of float constants holding -inf or values <= -1e30: initializers, Constant
    and ConstantOfShape nodes of the main graph."""
    from onnx import numpy_helper

    found = []
    for init in model.graph.initializer:
        if init.data_type in (1, 10, 11, 16):  # float, float16, double, bfloat16
            array = numpy_helper.to_array(init)
            if array.size and (array <= HUGE_NEGATIVE).any():
                found.append((f"initializer {init.name}", float(array.min())))
    for node in model.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in (1, 10, 11, 16):
                    array = numpy_helper.to_array(attr.t)
                    if array.size and (array <= HUGE_NEGATIVE).any():
                        found.append((f"{node.op_type} {node.name}", float(array.min())))
    return found


def finite_masks(model, value: float = MASK_VALUE) -> int:
    """Replace -inf / <= -1e30 float constants by `value` in place; returns how many tensors changed."""
    from onnx import numpy_helper

    def fixed(tensor):
        array = numpy_helper.to_array(tensor)
        if not array.size or not (array <= HUGE_NEGATIVE).any():
            return None
        out = np.where(array <= HUGE_NEGATIVE, np.asarray(value, array.dtype), array).astype(array.dtype)
        return numpy_helper.from_array(out, tensor.name)

    changed = 0
    for i, init in enumerate(model.graph.initializer):
        if init.data_type in (1, 10, 11, 16):
            new = fixed(init)
            if new is not None:
                model.graph.initializer[i].CopyFrom(new)
                changed += 1
    for node in model.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in (1, 10, 11, 16):
                    new = fixed(attr.t)
                    if new is not None:
                        attr.t.CopyFrom(new)
                        changed += 1
    return changed
