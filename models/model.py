"""The reference transformer: a small pre-norm GPT over bytes, in plain PyTorch.

Rotary position embeddings (RoPE) rather than learned positions: the Llama family that
edgetx mostly ships uses them, so the reference model exercises the same graph patterns
(RotaryEmbedding fusion) and the same `position_ids` contract, and it costs no parameters.

The forward pass takes and returns a KV cache, so one exported graph serves prefill and
decode: `forward(input_ids, attention_mask, position_ids, past) -> (logits, present)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Masked attention scores get this added. Finite (not -inf) so that a fully padded row
# stays NaN-free and static quantizers see a finite range; representable in fp16.
MASK_VALUE = -1.0e4

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GPTConfig:
    vocab_size: int = 256  # bytes
    block_size: int = 512  # longest sequence (prompt + generated) the model was trained for
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "GPTConfig":
        return cls(**json.loads(Path(path).read_text()))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim. Written with slices, as Llama
    does, so the exported graph matches onnxruntime's RotaryEmbedding fusion pattern."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary(nn.Module):
    """cos/sin tables for the given positions: (B, 1, S, head_dim) each."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        d = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # An outer product written as a matmul, as Llama does: onnxruntime's RotaryEmbedding
        # fusion recognises this form and replaces it with a cos/sin cache. Always in fp32: under
        # bf16 autocast the angles of late positions would be off by whole radians.
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            inv_freq = self.inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1)  # (B, d/2, 1)
            freqs = (inv_freq @ position_ids[:, None, :].float()).transpose(1, 2)  # (B, S, d/2)
            angles = torch.cat((freqs, freqs), dim=-1)  # (B, S, d)
            return angles.cos()[:, None], angles.sin()[:, None]  # (B, 1, S, d)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x, cos, sin, mask, past_k, past_v):
        B, S, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, S, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if past_k is not None:
            k = torch.cat((past_k, k), dim=2)
            v = torch.cat((past_v, v), dim=2)
        if mask is None:  # training: no cache, no padding
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, S, C)
        return self.c_proj(y), k, v


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, past_k=None, past_v=None):
        a, k, v = self.attn(self.ln_1(x), cos, sin, mask, past_k, past_v)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, k, v


def attention_bias(attention_mask: torch.Tensor, query_len: int) -> torch.Tensor:
    """Additive (B, 1, S, T) bias: query i (at absolute slot T-S+i) sees key j iff j <= T-S+i
    and key j is not padding. `attention_mask` is (B, T) with 1 = real token, 0 = padding."""
    total = attention_mask.shape[1]
    key_slot = torch.arange(total, device=attention_mask.device)
    query_slot = torch.arange(query_len, device=attention_mask.device) + (total - query_len)
    causal = key_slot[None, :] <= query_slot[:, None]  # (S, T)
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
    zero = torch.zeros((), dtype=torch.float32)
    return torch.where(allowed, zero, torch.full((), MASK_VALUE))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.rotary = Rotary(config)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Logits (B, S, vocab) and the cache grown by S positions.

        With no cache and no mask this is plain causal training. Otherwise `attention_mask`
        covers past + new tokens (B, P+S) and `position_ids` (B, S) places the new tokens.
        """
        B, S = input_ids.shape
        past_len = 0 if past is None else past[0][0].shape[2]
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + S, device=input_ids.device).expand(B, S)
        if past is None and attention_mask is None:
            mask = None
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, past_len + S, dtype=torch.int64)
            mask = attention_bias(attention_mask, S)
        cos, sin = self.rotary(position_ids)
        x = self.wte(input_ids)
        present: KVCache = []
        for i, block in enumerate(self.h):
            past_k, past_v = past[i] if past is not None else (None, None)
            x, k, v = block(x, cos, sin, mask, past_k, past_v)
            present.append((k, v))
        logits = self.lm_head(self.ln_f(x))
        return logits, present
