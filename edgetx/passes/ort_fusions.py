"""onnxscript's optimizer and its onnxruntime fusion rewriter, as one pass (rotary angles first put in the
form its fusions match: edgetx.passes.rotary_freqs)."""

from __future__ import annotations

from edgetx.passes.base import GraphPass, PassResult, ir


class OrtFusions(GraphPass):
    """onnxscript's optimizer + onnxruntime fusion rewriter (in place on the model)."""

    name = "ort-fusions"

    def call(self, model: ir.Model) -> PassResult:
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        from edgetx.passes.rotary_freqs import canonical_rotary_angles

        model, rotary_rewritten = canonical_rotary_angles(model)
        model, counts = optimize_for_ort(model)
        fusions = {k: v for k, v in counts.items() if v}
        if rotary_rewritten:
            fusions["rotary_angles_as_matmul"] = rotary_rewritten
        return self.done(model, bool(fusions), fusions=fusions)
