"""Graph transformations, each an onnx_ir pass: `pass(model) -> PassResult`, composable with
`onnx_ir.passes.Sequential`, with onnx-ir's own common passes used where they exist.

- `OrtFusions` (ort_fusions): onnxscript's optimizer and onnxruntime fusion rewriter;
- `GqaPaddedBatches` (gqa_padding): fused GroupQueryAttention made right for left-padded batches;
- `UnpackAttention`, `SplitSkipLayerNorm`, `CpuKernelRewrites` (cpu_kernels): fused encoder ops swapped
  for what onnxruntime's CPU runs faster;
- `OrtOffline` (ort_offline): onnxruntime's own graph optimizer, saved;
- `LogitsToKeep` (logits_to_keep): a causal LM's optional input for prompts' last-position logits;
- `FiniteMasks` (finite_masks) and `FixDims` (fixed_dims): graph edits for NPUs and fixed-shape backends.

Files are read and written only at stage boundaries, through `edgetx.passes.files`.
"""

from __future__ import annotations

from edgetx.passes.base import GraphPass, PassResult, run

__all__ = ["GraphPass", "PassResult", "run"]
