"""onnxscript's optimizer and its onnxruntime fusion rewriter, as one pass."""

from __future__ import annotations

from edgetx.passes import PassResult, op_histogram


class OrtFusions:
    """onnxscript's optimizer + onnxruntime fusion rewriter."""

    name = "ort-fusions"

    def __call__(self, model) -> PassResult:
        from onnxscript.rewriter.ort_fusions import optimize_for_ort

        before = op_histogram(model)
        model, counts = optimize_for_ort(model)
        fusions = {k: v for k, v in counts.items() if v}
        return PassResult(model, bool(fusions), {"fusions": fusions, "ops_before": before,
                                                 "ops_after": op_histogram(model)})

