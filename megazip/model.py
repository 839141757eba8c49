"""MEGABYTE (Yu et al. 2023) in plain PyTorch: the float model that is trained.

Bytes are grouped into patches of P. A *global* causal transformer runs over patches; its
input is shifted by one patch (a learned pad patch first), so the output for patch k has
seen only patches < k. Each global output is split into P slots, each projected to the
local width and added to the local embedding of the *previous* byte (a learned pad byte
at the start of every patch). A small *local* causal transformer then runs inside each
patch and a head gives 256 logits per byte. Every byte is predicted: the first byte of a
sequence and the value 0x00 included.

Attention positions use ALiBi (a linear distance penalty per head) and the global model
sees a bounded window of W patches, so cost per byte is constant however long the input
is, and a sequence can be continued patch by patch with a key/value cache. The integer
coding model (megazip/intmodel.py) is exported from this one and mirrors it op for op.

Notation in shape comments: B batch, K patches, P patch size, T = K*P bytes,
G = global width (P * D_G), L = local width, H heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .modelspec import PAD_BYTE, MegabyteConfig  # noqa: F401 (torch-free; re-exported)

PRESETS: dict[str, MegabyteConfig] = {
    # ~3.6 M parameters: trains on a laptop CPU, codes at tens of KB/s there.
    "tiny": MegabyteConfig(
        patch_size=8,
        global_dim=256,
        global_layers=4,
        global_heads=4,
        local_dim=128,
        local_layers=2,
        local_heads=4,
        window=128,
    ),
    # ~28 M parameters: for a GPU.
    "small": MegabyteConfig(
        patch_size=8,
        global_dim=512,
        global_layers=8,
        global_heads=8,
        local_dim=256,
        local_layers=4,
        local_heads=4,
        window=256,
    ),
    # ~40 K parameters, for fast tests.
    "test": MegabyteConfig(
        patch_size=4,
        global_dim=32,
        global_layers=2,
        global_heads=2,
        local_dim=32,
        local_layers=2,
        local_heads=2,
        window=16,
        mlp_ratio=2,
    ),
}


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi slopes 2^(-8 h / H), h = 1..H: head h penalises distance d by slope * d."""
    return [2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)]


def attention_bias(
    slopes: torch.Tensor, n_query: int, n_key: int, window: int | None
) -> torch.Tensor:
    """Additive attention bias (H, n_query, n_key) for queries that are the last n_query of
    n_key positions: -slope * distance where 0 <= distance < window, -inf elsewhere."""
    q = torch.arange(n_key - n_query, n_key, device=slopes.device)[:, None]
    k = torch.arange(n_key, device=slopes.device)[None, :]
    dist = q - k  # (n_query, n_key)
    visible = dist >= 0
    if window is not None:
        visible &= dist < window
    bias = -slopes[:, None, None] * dist.to(slopes.dtype)
    return bias.masked_fill(~visible, float("-inf"))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight).to(x.dtype)


class KVCache:
    """Keys and values of earlier positions for one attention layer, trimmed to the last
    `keep` positions: (B, H, S, head_dim) each."""

    def __init__(self, keep: int):
        self.keep = keep
        self.k = None
        self.v = None

    def extend(self, k, v):
        """Append new keys/values; return the full (past + new) tensors before trimming."""
        if self.k is not None:
            k = torch.cat([self.k, k], dim=2)
            v = torch.cat([self.v, v], dim=2)
        self.k, self.v = k[:, :, -self.keep :], v[:, :, -self.keep :]
        return k, v


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, window: int | None):
        super().__init__()
        self.n_heads = n_heads
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads)), persistent=False)

    def forward(self, x, cache: KVCache | None = None):
        B, T, C = x.shape  # T new positions
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, H, S, hd), S = past + T
        bias = attention_bias(self.slopes, T, k.shape[2], self.window).to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.fc = nn.Linear(dim, ratio * dim, bias=False)
        self.proj = nn.Linear(ratio * dim, dim, bias=False)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int, window: int | None):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, window)
        self.norm2 = RMSNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x, cache: KVCache | None = None):
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class Megabyte(nn.Module):
    def __init__(self, config: MegabyteConfig):
        super().__init__()
        c = self.config = config
        P, DG = c.patch_size, c.byte_dim
        # patch embedder: byte + in-patch position, P slices of D_G concatenated into G
        self.global_byte_emb = nn.Embedding(256, DG)
        self.global_pos_emb = nn.Parameter(torch.zeros(P, DG))
        self.global_pad = nn.Parameter(torch.zeros(c.global_dim))  # stands before patch 0
        self.global_blocks = nn.ModuleList(
            Block(c.global_dim, c.global_heads, c.mlp_ratio, c.window)
            for _ in range(c.global_layers)
        )
        self.global_norm = RMSNorm(c.global_dim)
        self.global_to_local = nn.Linear(DG, c.local_dim, bias=False)  # per slot
        # local model: previous byte (or the pad byte) + its slot of the global output
        self.local_byte_emb = nn.Embedding(257, c.local_dim)
        self.local_blocks = nn.ModuleList(
            Block(c.local_dim, c.local_heads, c.mlp_ratio, None) for _ in range(c.local_layers)
        )
        self.local_norm = RMSNorm(c.local_dim)
        self.head = nn.Linear(c.local_dim, 256, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 style scaled init of residual outputs
            if name.endswith("proj.weight") and "global_to_local" not in name:
                n = c.global_layers if name.startswith("global") else c.local_layers
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n))
        nn.init.normal_(self.global_pos_emb, std=0.02)
        nn.init.normal_(self.global_pad, std=0.02)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_caches(self) -> list[KVCache]:
        """Per global layer caches for streaming: each keeps W - 1 patches."""
        return [KVCache(self.config.window - 1) for _ in self.global_blocks]

    def embed_patches(self, patches):
        """(B, K, P) bytes -> (B, K, G) patch embeddings."""
        B, K, P = patches.shape
        e = self.global_byte_emb(patches) + self.global_pos_emb  # (B, K, P, D_G)
        return e.reshape(B, K, self.config.global_dim)

    def global_context(self, patches, caches=None, first: bool = True):
        """Global pass. patches (B, K, P) are the patches *before* the ones to predict
        (shifted by the caller, see forward); with first=True a pad patch stands in front
        and the last patch is dropped. Returns (B, K, P, L): per byte slot, the global
        contribution to the local model's input."""
        x = self.embed_patches(patches)  # (B, K, G)
        if first:
            pad = self.global_pad.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([pad, x[:, :-1]], dim=1)  # patch k now sees patches < k
        for i, block in enumerate(self.global_blocks):
            x = block(x, None if caches is None else caches[i])
        x = self.global_norm(x)
        B, K, _ = x.shape
        x = x.view(B, K, self.config.patch_size, self.config.byte_dim)  # (B, K, P, D_G)
        return self.global_to_local(x)  # (B, K, P, L)

    def local_logits(self, patches, context):
        """Local pass. patches (B, K, P) bytes, context (B, K, P, L) from global_context.
        Returns logits (B, K, P, 256) for every byte of every patch."""
        B, K, P = patches.shape
        prev = torch.cat(
            [torch.full_like(patches[..., :1], PAD_BYTE), patches[..., :-1].long()], dim=-1
        )  # (B, K, P): previous byte within the patch, pad first
        h = self.local_byte_emb(prev) + context  # (B, K, P, L)
        h = h.view(B * K, P, -1)
        for block in self.local_blocks:
            h = block(h)
        h = self.local_norm(h)
        return self.head(h).view(B, K, P, 256)

    def forward(self, x, targets=None):
        """x: (B, T) bytes as int64, T a multiple of P. Returns logits (B, T, 256) for
        every byte of x (teacher forcing), and the mean loss in nats if targets is given
        (normally targets = x)."""
        B, T = x.shape
        P = self.config.patch_size
        assert T % P == 0, f"sequence length {T} is not a multiple of patch size {P}"
        patches = x.view(B, T // P, P)
        logits = self.local_logits(patches, self.global_context(patches)).view(B, T, 256)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, 256), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def stream_logits(self, x, chunk_patches: int = 256):
        """Logits (B, T, 256) for arbitrarily long x (B, T), T a multiple of P, computed in
        chunks with the global KV cache: the model's streaming semantics, in which every
        patch sees the W patches before it (identical to forward when T <= W * P)."""
        B, T = x.shape
        P = self.config.patch_size
        patches = x.view(B, T // P, P)
        caches = self.new_caches()
        # global input: pad patch, then every patch but the last
        out = []
        K = patches.shape[1]
        for s in range(0, K, chunk_patches):
            chunk = patches[:, s : s + chunk_patches]
            if s == 0:
                ctx = self.global_context(chunk, caches, first=True)
            else:
                shifted = patches[:, s - 1 : s - 1 + chunk.shape[1]]
                ctx = self.global_context(shifted, caches, first=False)
            out.append(self.local_logits(chunk, ctx))
        return torch.cat(out, dim=1).reshape(B, T, 256)
