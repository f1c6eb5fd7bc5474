"""Rotary frequencies in the form onnxruntime's fusions know.

transformers 5 computes RoPE's angles as `position_ids[..., None] * inv_freq` (a broadcast Mul, [B, S, E]);
transformers 4 as `(inv_freq[None, :, None] @ position_ids[:, None, :]).transpose(1, 2)`. onnxscript's
cos/sin-cache fusion, and with it GroupQueryAttention, matches only the second. Each angle is one fp32
product in both forms (the MatMul's inner dimension is 1), so rewriting the first into the second is exact.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern, rewrite


class _BroadcastAngles(pattern.RewriteRuleClassBase):
    """Mul(Cast(Unsqueeze(position_ids, [-1])), inv_freq[E]) -> Transpose(MatMul(inv_freq[1, E, 1], ...))."""

    def pattern(self, op, position_ids, axes, inv_freq):
        return op.Mul(op.Cast(op.Unsqueeze(position_ids, axes), to=ir.DataType.FLOAT), inv_freq)

    def check(self, context, position_ids, axes, inv_freq, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if position_ids.shape is None or len(position_ids.shape) != 2:
            return result.fail("position ids are not known to be (batch, seq)", position_ids)
        axes_value = axes.const_value
        if axes_value is None or axes_value.numpy().reshape(-1).tolist() not in ([-1], [2]):
            return result.fail("not an unsqueeze onto a last axis", axes)
        if inv_freq.const_value is None or inv_freq.const_value.numpy().ndim != 1:
            return result.fail("the frequencies are not a constant vector", inv_freq)
        return result

    def rewrite(self, op, position_ids, inv_freq, **_):
        column = np.asarray(inv_freq.const_value.numpy(), dtype=np.float32).reshape(1, -1, 1)
        row = op.Cast(op.Unsqueeze(position_ids, op.Constant(value_ints=[1])), to=ir.DataType.FLOAT)
        angles = op.MatMul(op.Constant(value=ir.tensor(column, name=f"{inv_freq.name}_column")), row)
        return op.Transpose(angles, perm=[0, 2, 1])


RULES = [_BroadcastAngles.rule()]


def canonical_rotary_angles(model: ir.Model) -> tuple[ir.Model, int]:
    """Rewrite broadcast-Mul rotary angles into the MatMul form; the model and how many were rewritten."""
    before = sum(1 for node in model.graph.all_nodes() if node.op_type == "Mul")
    model = rewrite(model, pattern_rewrite_rules=RULES)
    return model, before - sum(1 for node in model.graph.all_nodes() if node.op_type == "Mul")
