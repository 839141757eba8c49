"""The integer coding model: MEGABYTE in exact integer arithmetic.

A range decoder reproduces the input only if it sees exactly the probability tables the
encoder used. This model computes those tables with integers only, so the result is the
same on any device, batch size, thread count, and for a whole sequence or byte by byte:

- weights int8 (one scale per output channel, folded into integer multipliers);
  activations int8 with static scales fixed at export; residual streams int64;
- matmuls as float32 GEMMs on integer-valued operands whose every partial sum stays below
  2^24 (exact in any summation order), split into blocks of K <= 1024;
- requantization `(acc * mult + 2^(shift-1)) >> shift` (round half up), then clamp;
- RMSNorm by integer mean of squares and an exact integer square root;
- softmax by integer max-subtraction, a table exp, int64 sums and integer division;
- GELU by table lookup.

The output per position is 256 integer counts, each >= 1, summing to COUNT_TOTAL = 2^24.
Everything that needs floating point (scales, tables) is computed once at export
(megazip/export.py) and stored as integers.

Shapes: B lanes, K patches, P patch size, D width, H heads, hd head width, S keys.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import torch

from .model import PAD_BYTE, MegabyteConfig

COUNT_BITS = 24
COUNT_TOTAL = 1 << COUNT_BITS  # every count table sums to this
RESIDUAL_LIMIT = 1 << 26  # residual streams are clamped to +-this (sums of squares fit int64)
GEMM_BLOCK = 1024  # largest K per float32 GEMM: 127 * 127 * 1024 < 2^24
PROB_BITS = 15  # attention probabilities sum to ~2^15
ATTN_UNIT = 32  # attention logits in 1/32 nat
OUT_UNIT = 64  # output logits in 1/64 nat
OUT_EXP_BITS = 30


def int_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact x @ w for integer-valued x (..., K) with |x| <= 127 (any integer dtype) and w
    (K, N) float32 holding integers with |w| <= 127. Returns int64 (..., N)."""
    xf = x.to(torch.float32)
    K = xf.shape[-1]
    acc = None
    for k0 in range(0, K, GEMM_BLOCK):
        part = (xf[..., k0 : k0 + GEMM_BLOCK] @ w[k0 : k0 + GEMM_BLOCK]).to(torch.int64)
        acc = part if acc is None else acc + part
    return acc


def requant(acc: torch.Tensor, mult: torch.Tensor, shift: int, limit: int) -> torch.Tensor:
    """round(acc * mult / 2^shift), clamped to [-limit, limit]; mult broadcasts over acc."""
    return torch.clamp((acc * mult + (1 << (shift - 1))) >> shift, -limit, limit)


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """Exact floor(sqrt(n)) of int64 n >= 0 (n < 2^62): a float64 estimate, then integer
    correction steps, so the result does not depend on the float sqrt's rounding."""
    r = torch.sqrt(n.to(torch.float64)).to(torch.int64)
    for _ in range(2):
        r = torch.where(r * r > n, r - 1, r)
    for _ in range(2):
        r = torch.where((r + 1) * (r + 1) <= n, r + 1, r)
    return r


def div_round(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """round(a / b) (half up) for int64 a and positive int64 b."""
    return torch.div(2 * a + b, 2 * b, rounding_mode="floor")


# ---------------------------------------------------------------------------- parameters


@dataclass
class IntLinear:
    """y = requant(x @ w): w (K, N) float32 integers in [-127, 127], mult (N,) int64."""

    w: torch.Tensor
    mult: torch.Tensor
    shift: int
    limit: int  # output clamp: 127 for int8 activations, RESIDUAL_LIMIT for residual adds

    def __call__(self, x):
        return requant(int_matmul(x, self.w), self.mult, self.shift, self.limit)


@dataclass
class IntNorm:
    """RMSNorm to int8 with a per-channel output scale: y = round(x * c / (rms * 2^16))."""

    c: torch.Tensor  # (D,) int64: 2^16 / output scale per channel
    eps: int  # added to the mean of squares, in residual units squared

    def __call__(self, x):
        ms = (x * x).sum(-1, keepdim=True) // x.shape[-1]
        r = isqrt(ms + self.eps)  # >= 1
        return torch.clamp(div_round(x * self.c, r << 16), -127, 127)


@dataclass
class IntAttention:
    qkv: IntLinear  # to q, k, v int8 (3 * D outputs)
    score_mult: int  # q.k -> logits in 1/ATTN_UNIT nat: (acc * score_mult) >> score_shift
    score_shift: int
    alibi: torch.Tensor  # (H, max distance) int64 penalties in 1/ATTN_UNIT nat
    exp: torch.Tensor  # (E,) int64: round(2^PROB_BITS * exp(-i / ATTN_UNIT)), last = 0
    out_mult: torch.Tensor  # (D,) int64: (probs @ v) -> int8 input of proj
    out_shift: int
    proj: IntLinear
    n_heads: int
    window: int | None

    def __call__(self, x, cache: IntKVCache | None = None):
        B, T, D = x.shape
        hd = D // self.n_heads
        qkv = self.qkv(x)
        q, k, v = (
            t.reshape(B, T, self.n_heads, hd).transpose(1, 2).to(torch.float32)
            for t in qkv.split(D, dim=-1)
        )  # (B, H, T, hd) each, integer-valued
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, H, S, hd)
        S = k.shape[2]
        scores = (q @ k.transpose(-1, -2)).to(torch.int64)  # exact: hd * 127^2 < 2^24
        logits = (scores * self.score_mult + (1 << (self.score_shift - 1))) >> self.score_shift
        dist = torch.arange(S - T, S, device=x.device)[:, None] - torch.arange(S, device=x.device)
        visible = dist >= 0
        if self.window is not None:
            visible &= dist < self.window
        penalty = self.alibi[:, dist.clamp(0, self.alibi.shape[1] - 1)]  # (H, T, S)
        logits = torch.where(visible, logits - penalty, -(1 << 40))
        z = logits.amax(-1, keepdim=True) - logits  # >= 0
        e = self.exp[z.clamp(max=len(self.exp) - 1)]
        den = e.sum(-1, keepdim=True)
        p = torch.div((e << PROB_BITS) + den // 2, den, rounding_mode="floor")  # sum ~ 2^15
        y = (p.to(torch.float32) @ v).to(torch.int64)  # exact: 2^15 * 127 * (1 + S/2^16)
        y = y.transpose(1, 2).reshape(B, T, D)
        y = requant(y, self.out_mult, self.out_shift, 127)
        return self.proj(y)


@dataclass
class IntMLP:
    fc: IntLinear  # to GELU table indices in [-limit, limit]
    gelu: torch.Tensor  # (2 * limit + 1,) int64 int8 outputs
    proj: IntLinear

    def __call__(self, x):
        return self.proj(self.gelu[self.fc(x) + self.fc.limit])


@dataclass
class IntBlock:
    norm1: IntNorm
    attn: IntAttention
    norm2: IntNorm
    mlp: IntMLP

    def __call__(self, x, cache=None):
        x = torch.clamp(x + self.attn(self.norm1(x), cache), -RESIDUAL_LIMIT, RESIDUAL_LIMIT)
        return torch.clamp(x + self.mlp(self.norm2(x)), -RESIDUAL_LIMIT, RESIDUAL_LIMIT)


class IntKVCache:
    """Keys/values (B, H, S, hd) of one layer as float32 integers, trimmed to `keep`."""

    def __init__(self, keep: int):
        self.keep = keep
        self.k = self.v = None

    def extend(self, k, v):
        if self.k is not None:
            k, v = torch.cat([self.k, k], 2), torch.cat([self.v, v], 2)
        self.k, self.v = k[:, :, -self.keep :], v[:, :, -self.keep :]
        return k, v


@dataclass
class LaneState:
    """Streaming state of a batch of lanes: global caches and the next patch index."""

    caches: list[IntKVCache]
    patches_done: int = 0
    local_caches: list[IntKVCache] = field(default_factory=list)


# --------------------------------------------------------------------------------- model


class IntMegabyte:
    """The integer coding model. Build it with megazip.export.export(float_model, ...)
    or IntMegabyte.from_tensors(...); it holds only integer data."""

    def __init__(self, config: MegabyteConfig, tensors: dict[str, torch.Tensor], ints: dict):
        self.config = config
        self.tensors = tensors  # canonical storage (what is hashed and saved)
        self.ints = ints  # scalar integers (shifts, multipliers, eps)
        self.device = torch.device("cpu")
        self._hash: str | None = None
        self._build()

    # -- construction from the flat tensor dict
    def _linear(self, name, limit):
        t = self.tensors
        return IntLinear(
            t[f"{name}.w"].to(self.device, torch.float32).t().contiguous(),
            t[f"{name}.mult"].to(self.device, torch.int64),
            self.ints[f"{name}.shift"],
            limit,
        )

    def _norm(self, name):
        return IntNorm(
            self.tensors[f"{name}.c"].to(self.device, torch.int64), self.ints[f"{name}.eps"]
        )

    def _block(self, name, heads, window):
        t, i = self.tensors, self.ints
        attn = IntAttention(
            qkv=self._linear(f"{name}.attn.qkv", 127),
            score_mult=i[f"{name}.attn.score_mult"],
            score_shift=i[f"{name}.attn.score_shift"],
            alibi=t[f"{name}.attn.alibi"].to(self.device, torch.int64),
            exp=t["attn_exp"].to(self.device, torch.int64),
            out_mult=t[f"{name}.attn.out_mult"].to(self.device, torch.int64),
            out_shift=i[f"{name}.attn.out_shift"],
            proj=self._linear(f"{name}.attn.proj", RESIDUAL_LIMIT),
            n_heads=heads,
            window=window,
        )
        gelu = t[f"{name}.mlp.gelu"].to(self.device, torch.int64)
        mlp = IntMLP(
            self._linear(f"{name}.mlp.fc", (len(gelu) - 1) // 2),
            gelu,
            self._linear(f"{name}.mlp.proj", RESIDUAL_LIMIT),
        )
        return IntBlock(self._norm(f"{name}.norm1"), attn, self._norm(f"{name}.norm2"), mlp)

    def _build(self):
        c, t, d = self.config, self.tensors, self.device
        self.global_emb = t["global_emb"].to(d, torch.int64)  # (P, 256, G/P) residual units
        self.global_pad = t["global_pad"].to(d, torch.int64)  # (G,)
        self.global_blocks = [
            self._block(f"global.{i}", c.global_heads, c.window) for i in range(c.global_layers)
        ]
        self.global_norm = self._norm("global_norm")
        # per slot p: (P, D_G, L) float32 integers, and (P, L) multipliers
        self.to_local_w = t["to_local.w"].to(d, torch.float32).transpose(1, 2).contiguous()
        self.to_local_mult = t["to_local.mult"].to(d, torch.int64)
        self.local_emb = t["local_emb"].to(d, torch.int64)  # (257, L)
        self.local_blocks = [
            self._block(f"local.{i}", c.local_heads, None) for i in range(c.local_layers)
        ]
        self.local_norm = self._norm("local_norm")
        self.head = self._linear("head", 1 << 40)
        self.out_exp = t["out_exp"].to(d, torch.int64)

    def to(self, device) -> IntMegabyte:
        """This model on `device` (tables identical on every device)."""
        self.device = torch.device(device)
        self._build()
        return self

    # -- identity
    def content_hash(self) -> str:
        """sha256 (hex) of the config, the scalar integers and every tensor (name, dtype,
        shape, bytes, in name order): the model's identity in .mgz headers."""
        if self._hash is None:
            self._hash = self._compute_hash()
        return self._hash

    def _compute_hash(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        h.update(json.dumps(self.ints, sort_keys=True).encode())
        for name in sorted(self.tensors):
            x = self.tensors[name].contiguous().cpu()
            h.update(f"{name}|{x.dtype}|{tuple(x.shape)}|".encode())
            h.update(x.numpy().tobytes())
        return h.hexdigest()

    # -- the two passes
    def new_state(self, batch: int) -> LaneState:
        return LaneState([IntKVCache(self.config.window - 1) for _ in self.global_blocks])

    def global_context(self, state: LaneState, prev_patches: torch.Tensor) -> torch.Tensor:
        """Advance the global model by K patches. prev_patches (B, K, P) are the patches
        *before* the K patches to predict; at the start of a lane (state.patches_done == 0)
        its first row is ignored and the pad patch used instead. Returns (B, K, P, L) int64:
        the global contribution to each byte's local input."""
        c = self.config
        B, K, P = prev_patches.shape
        pos = torch.arange(P, device=self.device)
        x = self.global_emb[pos, prev_patches.long()]  # (B, K, P, D_G)
        x = x.reshape(B, K, c.global_dim)
        if state.patches_done == 0:
            x[:, 0] = self.global_pad
        for block, cache in zip(self.global_blocks, state.caches, strict=True):
            x = block(x, cache)
        state.patches_done += K
        x = self.global_norm(x).reshape(B, K, P, c.byte_dim)  # int8
        acc = torch.einsum("bkpd,pdl->bkpl", x.to(torch.float32), self.to_local_w)
        return requant(
            acc.to(torch.int64), self.to_local_mult, self.ints["to_local.shift"], RESIDUAL_LIMIT
        )

    def counts_from_logits(self, acc: torch.Tensor) -> torch.Tensor:
        """Head accumulators (..., 256) -> integer counts (..., 256), each >= 1, summing to
        COUNT_TOTAL exactly (the remainder goes to the first most likely byte)."""
        logits = requant(acc, self.head.mult, self.head.shift, 1 << 40)  # 1/OUT_UNIT nat
        z = logits.amax(-1, keepdim=True) - logits
        e = self.out_exp[z.clamp(max=len(self.out_exp) - 1)]
        free = COUNT_TOTAL - 256
        counts = 1 + torch.div(e * free, e.sum(-1, keepdim=True), rounding_mode="floor")
        rest = COUNT_TOTAL - counts.sum(-1, keepdim=True)
        return counts.scatter_add(-1, z.argmin(-1, keepdim=True), rest)

    def _head(self, h):
        return int_matmul(self.local_norm(h), self.head.w)

    def local_counts(self, patches: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Whole patches at once. patches (B, K, P) bytes, context (B, K, P, L) from
        global_context. Returns counts (B, K, P, 256) int64."""
        B, K, P = patches.shape
        pad = torch.full_like(patches[..., :1], PAD_BYTE)
        prev = torch.cat([pad, patches[..., :-1]], -1).long()
        h = (self.local_emb[prev] + context).reshape(B * K, P, -1)
        for block in self.local_blocks:
            h = block(h)
        return self.counts_from_logits(self._head(h)).reshape(B, K, P, 256)

    def begin_patch(self, state: LaneState):
        """Reset the local caches before the first byte of a patch (byte-by-byte mode)."""
        state.local_caches = [IntKVCache(self.config.patch_size) for _ in self.local_blocks]

    def local_step(self, state: LaneState, prev_byte: torch.Tensor, context: torch.Tensor):
        """One byte for every lane. prev_byte (B,) the previous byte of this patch (PAD_BYTE
        at its start), context (B, L) this byte's slot of global_context. Returns counts
        (B, 256) int64."""
        h = (self.local_emb[prev_byte.long()] + context)[:, None]  # (B, 1, L)
        for block, cache in zip(self.local_blocks, state.local_caches, strict=True):
            h = block(h, cache)
        return self.counts_from_logits(self._head(h[:, 0]))

    @torch.no_grad()
    def count_tables(self, lanes: torch.Tensor, chunk_patches: int = 64):
        """Teacher-forced tables for whole lanes. lanes (B, T) bytes, T a multiple of P.
        Yields (start byte, counts (B, C*P, 256) int64) chunk by chunk, identical to the
        byte-by-byte tables of local_step."""
        P = self.config.patch_size
        B, T = lanes.shape
        patches = lanes.to(self.device).reshape(B, T // P, P)
        state = self.new_state(B)
        for s in range(0, T // P, chunk_patches):
            chunk = patches[:, s : s + chunk_patches]
            prev = patches[:, max(s - 1, 0) : s - 1 + chunk.shape[1]] if s else None
            if prev is None:  # the first row is replaced by the pad patch
                prev = torch.cat([chunk[:, :1], chunk[:, :-1]], 1)
            ctx = self.global_context(state, prev)
            yield s * P, self.local_counts(chunk, ctx).reshape(B, -1, 256)

    @torch.no_grad()
    def counts_incremental(self, lanes: torch.Tensor) -> torch.Tensor:
        """The same tables byte by byte, as a decoder computes them (for tests and as the
        reference): (B, T, 256) int64."""
        P = self.config.patch_size
        B, T = lanes.shape
        lanes = lanes.to(self.device).long()
        state = self.new_state(B)
        out = []
        for k in range(T // P):
            prev = lanes[:, (k - 1) * P : k * P] if k else lanes[:, :P]
            ctx = self.global_context(state, prev.reshape(B, 1, P))[:, 0]  # (B, P, L)
            self.begin_patch(state)
            prev_byte = torch.full((B,), PAD_BYTE, device=self.device)
            for j in range(P):
                out.append(self.local_step(state, prev_byte, ctx[:, j]))
                prev_byte = lanes[:, k * P + j]
        return torch.stack(out, 1)
