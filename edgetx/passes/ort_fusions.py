"""onnxscript's optimizer and its onnxruntime fusion rewriter, as one pass."""

from __future__ import annotations

from edgetx.passes.base import GraphPass, PassResult, ir


class OrtFusions(GraphPass):
    """onnxscript's optimizer + onnxruntime fusion rewriter (in place on the model)."""

    name = "ort-fusions"

    def call(self, model: ir.Model) -> PassResult:
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        model, counts = optimize_for_ort(model)
        fusions = {k: v for k, v in counts.items() if v}
        return self.done(model, bool(fusions), fusions=fusions)
