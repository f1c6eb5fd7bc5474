"""Plain nn.Module transformers for tests/test_module_api.py (no edgetx GPT, no transformers): a decoder with
a grouped-query KV cache, an encoder with token types, and factories for `edgetx build module_models:...`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

VOCAB = 384  # hf_models' tokenizers have this many tokens


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention over keys where `allowed` (batch, 1, q, k) holds; a finite fill keeps padded rows finite."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return F.softmax(scores, dim=-1) @ v


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, cache_repeated: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.cache_repeated = cache_repeated  # a contract violation: caches keys after repeating the kv heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.head_dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, past_k, past_v, allowed):
        b, s, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).view(b, s, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        repeat = self.heads // self.kv_heads
        if self.cache_repeated:
            k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)
            if past_k.shape[2]:  # (and only concatenates a non-empty past, so the bug shows in present's shape)
                k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        else:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        rk, rv = (k, v) if self.cache_repeated else (k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1))
        y = _attend(q, rk, rv, allowed).transpose(1, 2).reshape(b, s, -1)
        x = x + self.out(y)
        return x + self.mlp(self.norm2(x)), (k, v)


class TinyDecoder(nn.Module):
    """A pre-norm decoder with learned positions and GQA, following edgetx's causal-lm forward contract."""

    def __init__(self, vocab_size: int = VOCAB, dim: int = 32, n_layer: int = 2, n_head: int = 4,
                 n_kv_head: int = 2, block_size: int = 128, cache_repeated: bool = False):
        super().__init__()
        self.n_layer, self.n_head, self.n_kv_head = n_layer, n_head, n_kv_head
        self.n_embd, self.block_size = dim, block_size
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(block_size, dim)
        self.blocks = nn.ModuleList(DecoderBlock(dim, n_head, n_kv_head, cache_repeated) for _ in range(n_layer))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, input_ids, attention_mask, position_ids, past):
        seq, total = input_ids.shape[1], attention_mask.shape[1]
        query_at = torch.arange(seq, device=input_ids.device)[:, None] + (total - seq)
        causal = torch.arange(total, device=input_ids.device)[None, :] <= query_at
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        x = self.tok(input_ids) + self.pos(position_ids)
        present = []
        for block, (past_k, past_v) in zip(self.blocks, past):
            x, kv = block(x, past_k, past_v, allowed)
            present.append(kv)
        return self.head(self.norm(x)), present


@torch.no_grad()
def greedy(model: TinyDecoder, prompt: list[int], steps: int) -> list[int]:
    """The module's own greedy loop with its KV cache, in torch."""
    kv = model.n_embd // model.n_head
    past = [(torch.zeros(1, model.n_kv_head, 0, kv),) * 2 for _ in range(model.n_layer)]
    ids, out = torch.tensor([prompt]), []
    for _ in range(steps):
        length = past[0][0].shape[2] + ids.shape[1]
        positions = torch.arange(length - ids.shape[1], length)[None]
        logits, past = model(ids, torch.ones(1, length, dtype=torch.int64), positions, past)
        out.append(int(logits[0, -1].argmax()))
        ids = torch.tensor([[out[-1]]])
    return out


class TinyEncoder(nn.Module):
    """A BERT-like encoder: token, position and token-type embeddings, two post-norm blocks."""

    def __init__(self, vocab_size: int = VOCAB, dim: int = 32, heads: int = 4, layers: int = 2,
                 max_position_embeddings: int = 64):
        super().__init__()
        self.heads, self.max_position_embeddings = heads, max_position_embeddings
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_position_embeddings, dim)
        self.types = nn.Embedding(2, dim)
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
                                 for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2 * layers))

    def forward(self, input_ids, attention_mask, token_type_ids):
        b, s = input_ids.shape
        x = self.tok(input_ids) + self.pos(torch.arange(s, device=input_ids.device))[None] + self.types(token_type_ids)
        allowed = attention_mask[:, None, None, :].bool()
        for i, (qkv, out, mlp) in enumerate(zip(self.qkv, self.out, self.mlp)):
            q, k, v = qkv(x).view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            x = self.norms[2 * i](x + out(_attend(q, k, v, allowed).transpose(1, 2).reshape(b, s, -1)))
            x = self.norms[2 * i + 1](x + mlp(x))
        return x


def decoder(seed: int = 0, **kwargs) -> TinyDecoder:
    torch.manual_seed(seed)
    return TinyDecoder(**kwargs).eval()


def encoder(seed: int = 0) -> TinyEncoder:
    torch.manual_seed(seed)
    return TinyEncoder().eval()


PROMPTS = [[5, 17, 99, 3, 250, 41, 7, 7, 120], [300, 2, 64, 18]]


def decoder_with_settings():
    """A factory for `edgetx build module_models:decoder_with_settings`: the module and how to build it."""
    return decoder(), {"kind": "causal-lm", "inputs": PROMPTS, "eos_token_ids": [0]}


def seen_allow_pickle(allow_pickle: bool = False):
    """A factory that takes the CLI's --allow-pickle (as one that calls load_weights would)."""
    return decoder(), {"kind": "causal-lm", "inputs": PROMPTS, "name": f"allow_pickle={allow_pickle}"}


def not_a_module():
    return "a string"
