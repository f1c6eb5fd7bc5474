"""Graph remedies for backends that compute in low precision or quantize activations.

`FiniteMasks`: attention masks built with -inf or the float32 minimum (-3.4e38, what
`torch.finfo(dtype).min` gives) break NPU paths: in fp16 -3.4e38 is -inf and 0 * -inf is NaN, and
static QDQ calibration of a tensor holding it gives an infinite scale. A large negative finite value
(-1e4, as the reference GPT uses) masks just as well: exp(-1e4 - max) is exactly 0 in fp32 and fp16.
The replacement is safe, and callers check the result against the original graph anyway.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgetx.passes.base import GraphPass, PassResult, ir

MASK_VALUE = -1e4
HUGE_NEGATIVE = -1e30  # float constants at or below this (or -inf) are mask fill values
_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16}


def _float_constants(model: ir.Model) -> Iterator[tuple[str, ir.TensorProtocol, object]]:
    """(where, tensor, owner) for each float constant of the main graph: initializers (owner: the
    value) and the `value` of Constant / ConstantOfShape nodes (owner: the node)."""
    for value in model.graph.initializers.values():
        if value.const_value is not None and value.const_value.dtype in _FLOATS:
            yield f"initializer {value.name}", value.const_value, value
    for node in model.graph:
        attr = node.attributes.get("value") if node.op_type in ("Constant", "ConstantOfShape") else None
        if attr is not None and attr.type == ir.AttributeType.TENSOR and attr.value.dtype in _FLOATS:
            yield f"{node.op_type} {node.name}", attr.value, node


def _fills(array: np.ndarray) -> np.ndarray:
    """Where `array` holds mask fill values (compared in float64: -1e30 overflows a float16)."""
    return array.astype(np.float64) <= HUGE_NEGATIVE


def _has_mask_fill(array: np.ndarray) -> bool:
    return bool(array.size) and bool(_fills(array).any())


def mask_constants(model: ir.Model) -> list[tuple[str, float]]:
    """(where, value) of float constants holding -inf or values <= -1e30."""
    found = []
    for where, tensor, _ in _float_constants(model):
        array = tensor.numpy()
        if _has_mask_fill(array):
            found.append((where, float(array.min())))
    return found


class FiniteMasks(GraphPass):
    """Replace -inf / <= -1e30 float constants by `value` (default -1e4); counts the tensors changed."""

    name = "finite-masks"

    def __init__(self, value: float = MASK_VALUE):
        self.value = value

    def call(self, model: ir.Model) -> PassResult:
        changed = 0
        for _, tensor, owner in list(_float_constants(model)):
            array = tensor.numpy()
            if not _has_mask_fill(array):
                continue
            fixed = ir.tensor(np.where(_fills(array), np.asarray(self.value, array.dtype), array)
                              .astype(array.dtype), dtype=tensor.dtype, name=tensor.name)
            if isinstance(owner, ir.Value):
                owner.const_value = fixed
            else:
                owner.attributes["value"] = ir.AttrTensor("value", fixed)
            changed += 1
        if not changed:
            return self.skipped(model, "no -inf or <= -1e30 float constants")
        return self.done(model, changed=changed)
