"""Tiny random-init Llama decoders written as GGUF files of each common type, locally, for fast tests.

Weight matrices of the types the `gguf` package quantizes in Python (F16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)
are random normal weights quantized by it. The K-quants (Q4_K, Q5_K, Q6_K) it can only de-quantize, so
their blocks are built directly: random quant bytes under chosen super-block scales, so the weights sit on
that type's grid by construction. Norms stay F32. The metadata is what transformers' GGUF reader
(`integrations/ggml.py`) maps onto a LlamaConfig, and the tokenizer is tests/hf_models.py's byte-level BPE
as a "gpt2" GGUF tokenizer (what SmolLM2's file carries).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, CONTEXT = 256, 512, 2, 4, 2, 256  # K-quant rows need K % 256 == 0
TYPES = ("F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")


def _k_blocks(qtype: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """`n_blocks` random blocks of a K-quant type ([n_blocks, type size] uint8): random quants, sub-block
    scales and mins (6-bit in Q4_K/Q5_K, int8 in Q6_K) under fp16 super-block scales chosen so that the
    weights come out at the size of a random init (|w| below ~0.05)."""
    def fp16(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, (n_blocks, 1)).astype(np.float16).view(np.uint8)

    def noise(size: int) -> np.ndarray:
        return rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)

    if qtype == "Q4_K":  # d, dmin, 12 bytes of packed 6-bit scales and mins, 128 bytes of 4-bit quants
        return np.concatenate([fp16(5e-5, 1e-4), fp16(2e-4, 4e-4), noise(12), noise(128)], axis=1)
    if qtype == "Q5_K":  # d, dmin, scales and mins, 32 bytes of high bits, 128 bytes of low nibbles
        return np.concatenate([fp16(2e-5, 5e-5), fp16(2e-4, 4e-4), noise(12), noise(32), noise(128)], axis=1)
    if qtype == "Q6_K":  # 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, d
        return np.concatenate([noise(128), noise(64), noise(16), fp16(5e-6, 1e-5)], axis=1)
    raise ValueError(qtype)


def weight_bytes(qtype: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A [rows, cols] weight matrix as GGUF stores it in `qtype` (rows = output features)."""
    import gguf

    kind = gguf.GGMLQuantizationType[qtype]
    if qtype in K_QUANTS:
        block, size = gguf.GGML_QUANT_SIZES[kind]
        return _k_blocks(qtype, rows * cols // block, rng).reshape(rows, cols // block * size)
    weights = (0.02 * rng.standard_normal((rows, cols))).astype(np.float32)
    if qtype == "F16":
        return weights.astype(np.float16)
    return gguf.quants.quantize(weights, kind)


def write_gguf(path: Path, qtype: str, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 256, GQA 4/2 heads) whose weight matrices are all `qtype`, as a GGUF file."""
    import gguf

    from hf_models import byte_level_tokenizer

    if qtype not in TYPES:
        raise ValueError(f"{qtype}: not one of {TYPES}")
    rng = np.random.default_rng(seed)
    tokenizer = json.loads(byte_level_tokenizer().backend_tokenizer.to_str())
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    eos = vocab["<|endoftext|>"]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny-llama-{qtype.lower()}")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t == "<|endoftext|>" else gguf.TokenType.NORMAL
                            for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)

    def matrix(name: str, rows: int, cols: int) -> None:
        data = weight_bytes(qtype, rows, cols, rng)
        writer.add_tensor(name, data, raw_dtype=None if data.dtype != np.uint8 else gguf.GGMLQuantizationType[qtype])

    def norm(name: str) -> None:
        writer.add_tensor(name, (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))

    head_dim = HIDDEN // HEADS
    matrix("token_embd.weight", len(tokens), HIDDEN)
    for i in range(LAYERS):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", HIDDEN, HIDDEN)
        matrix(f"blk.{i}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        matrix(f"blk.{i}.attn_output.weight", HIDDEN, HIDDEN)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_up.weight", FFN, HIDDEN)
        matrix(f"blk.{i}.ffn_down.weight", HIDDEN, FFN)
    norm("output_norm.weight")
    matrix("output.weight", len(tokens), HIDDEN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
