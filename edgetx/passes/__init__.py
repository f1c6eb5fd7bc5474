"""Graph transformations: each a small pass object, `pass(model) -> PassResult`, on an onnx_ir model.

- `OrtFusions` (ort_fusions): onnxscript's optimizer and onnxruntime fusion rewriter;
- `GqaPaddedBatches` (gqa_padding): fused GroupQueryAttention made right for left-padded batches;
- `CpuKernelRewrites` (cpu_kernels): fused encoder ops swapped for what onnxruntime's CPU runs faster;
- `OrtOffline` (ort_offline): onnxruntime's own graph optimizer, saved;
- logits_to_keep, finite_masks, fixed dims: graph edits for the causal-LM contract and for NPUs.

`run_passes` applies a list in order and records what each did, for the manifest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from edgetx.errors import EdgetxError


def _ir():
    try:
        import onnx_ir as ir
    except ImportError:
        raise EdgetxError("graph optimization needs onnx-ir and onnxscript: pip install 'edgetx[export]'") from None
    return ir


def op_histogram(model) -> dict[str, int]:
    """Op type -> count over the main graph (domain-qualified for non-standard ops)."""
    counts = Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                     for node in model.graph)
    return dict(counts.most_common())


@dataclass
class PassResult:
    model: object  # onnx_ir.Model
    modified: bool
    details: dict = field(default_factory=dict)


def run_passes(model, passes: list) -> tuple[object, list[dict]]:
    """Apply passes in order; return the model and what each changed."""
    log = []
    for p in passes:
        result = p(model)
        model = result.model
        log.append({"pass": p.name, "modified": result.modified, **result.details})
    return model, log

