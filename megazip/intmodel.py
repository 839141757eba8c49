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

import copy
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from .kernels import kernels_for
from .modelspec import (  # noqa: F401 (re-exported: the constants live torch-free there)
    ATTN_UNIT,
    COUNT_BITS,
    COUNT_TOTAL,
    GEMM_BLOCK,
    OUT_EXP_BITS,
    OUT_UNIT,
    PAD_BYTE,
    RESIDUAL_LIMIT,
    MegabyteConfig,
    SlidingKVCache,
)


class _ExactFloat32:
    """The context of exact_float32_matmuls (re-entrant: only the outermost entry reads,
    sets and restores the settings, so nested entries cost next to nothing)."""

    backends = (torch.backends.mkldnn.matmul, torch.backends.cuda.matmul)
    depth = 0
    saved: list[str] = []

    def __enter__(self):
        if not _ExactFloat32.depth:
            _ExactFloat32.saved = [b.fp32_precision for b in self.backends]
            for b, p in zip(self.backends, _ExactFloat32.saved, strict=True):
                if p != "ieee":
                    b.fp32_precision = "ieee"
        _ExactFloat32.depth += 1
        return self

    def __exit__(self, *exc):
        _ExactFloat32.depth -= 1
        if not _ExactFloat32.depth:
            for b, p in zip(self.backends, _ExactFloat32.saved, strict=True):
                if p != "ieee":
                    b.fp32_precision = p
        return False


_EXACT = _ExactFloat32()


def exact_float32_matmuls() -> _ExactFloat32:
    """A context in which float32 GEMMs run in full IEEE precision on the CPU (oneDNN) and
    on CUDA (no TF32 or bf16 shortcuts), which the integer model's exactness needs; the
    caller's settings are restored on exit (these settings are the process's). The
    IntMegabyte methods that run GEMMs enter it themselves; a caller making many calls
    (a decoding loop) may enter it once around them."""
    return _EXACT


def _exact(fn):
    """Decorator: run `fn` inside exact_float32_matmuls()."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with _EXACT:
            return fn(*args, **kwargs)

    return run


def int_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact x @ w for integer-valued x (..., K), |x| <= 127, and w (K, N) float32 holding
    integers, |w| <= 127. Returns float32 (K <= GEMM_BLOCK: every partial sum < 2^24) or
    float64 (sums of such blocks, exact below 2^53). Exact at torch's default precision
    or inside exact_float32_matmuls()."""
    xf = x.to(torch.float32)
    K = xf.shape[-1]
    if K <= GEMM_BLOCK:
        return xf @ w
    acc = None
    for k0 in range(0, K, GEMM_BLOCK):
        part = (xf[..., k0 : k0 + GEMM_BLOCK] @ w[k0 : k0 + GEMM_BLOCK]).to(torch.float64)
        acc = part if acc is None else acc + part
    return acc


# ---------------------------------------------------------------------------- parameters


def _int8_gemm_works() -> bool:
    """Whether torch has an exact int8 x int8 -> int32 CPU GEMM (torch._int_mm)."""
    try:
        a = torch.tensor([[-128, 127, 3]], dtype=torch.int8)
        return torch._int_mm(a, a.t().contiguous()).tolist() == [[16384 + 16129 + 9]]
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


INT8_GEMM = _int8_gemm_works() and os.environ.get("MEGAZIP_INT8_GEMM", "1") != "0"


@dataclass
class IntLinear:
    """acc = x @ w with w (K, N) float32 integers in [-127, 127]; its outputs are then
    requantized by mult (N,) int64 and shift. With w8 (the same weights as int8, on the
    CPU) the product runs as an int8 GEMM with int32 accumulators (exact for any K here:
    |acc| <= 128 * 127 * K < 2^31): 2-4x faster than float32, the same integers."""

    w: torch.Tensor
    mult: torch.Tensor
    shift: int
    w8: torch.Tensor | None = None

    def __call__(self, x):
        if self.w8 is not None:
            K = x.shape[-1]
            acc = torch._int_mm(x.reshape(-1, K).to(torch.int8), self.w8)
            return acc.view(*x.shape[:-1], acc.shape[-1])
        return int_matmul(x, self.w)


@dataclass
class IntNorm:
    """RMSNorm to int8 with a per-channel output scale: round(x * c / (rms * 2^16))."""

    c: torch.Tensor  # (D,) int64: 2^16 / output scale per channel
    eps: int  # added to the mean of squares, in residual units squared


@dataclass
class IntAttention:
    qkv: IntLinear  # to q, k, v int8 (3 * D outputs)
    score_mult: int  # q.k -> logits in 1/ATTN_UNIT nat: (acc * score_mult) >> score_shift
    score_shift: int
    alibi: torch.Tensor  # (H, max distance) int64 penalties in 1/ATTN_UNIT nat
    exp: torch.Tensor  # (E,) int64: round(2^PROB_BITS * exp(-i / ATTN_UNIT)), last = 0
    out_mult: torch.Tensor  # (D,) int64: (probs @ v) -> int8 input of proj
    out_shift: int
    proj: IntLinear  # to the residual stream
    n_heads: int
    window: int | None


@dataclass
class IntMLP:
    fc: IntLinear  # to GELU table indices
    gelu: torch.Tensor  # (2 * limit + 1,) int64: int8 outputs for indices -limit..limit
    proj: IntLinear  # to the residual stream


@dataclass
class IntBlock:
    norm1: IntNorm
    attn: IntAttention
    norm2: IntNorm
    mlp: IntMLP


class IntKVCache(SlidingKVCache):
    """modelspec.SlidingKVCache on torch buffers of the kernels' kv_dtype."""

    def reserve(self, B, H, T, hd, dtype, device):
        return self.reserve_with(
            T, lambda cap: torch.empty((B, H, cap, hd), dtype=dtype, device=device)
        )


@dataclass
class LaneState:
    """Streaming state of a batch of lanes: global caches and the next patch index."""

    caches: list[IntKVCache]
    patches_done: int = 0
    local_caches: list[IntKVCache] = field(default_factory=list)


# --------------------------------------------------------------------------------- model


class IntMegabyte:
    """The integer coding model. Build it with megazip.export.export(float_model, ...)
    or IntMegabyte(config, tensors, ints); it holds only integer data."""

    def __init__(self, config: MegabyteConfig, tensors: dict[str, torch.Tensor], ints: dict):
        self.config = config
        self.tensors = tensors  # canonical storage (what is hashed and saved)
        self.ints = ints  # scalar integers (shifts, multipliers, eps)
        self.device = torch.device("cpu")
        self.kernels = kernels_for(self.device)
        self._hash: str | None = None
        self._build()

    # -- construction from the flat tensor dict
    def _t(self, name, dtype=torch.int64):
        return self.tensors[name].to(self.device, dtype)

    def _linear(self, name):
        w = self._t(f"{name}.w", torch.float32).t().contiguous()
        w8 = w.to(torch.int8) if INT8_GEMM and self.device.type == "cpu" else None
        return IntLinear(w, self._t(f"{name}.mult"), self.ints[f"{name}.shift"], w8)

    def _norm(self, name):
        return IntNorm(self._t(f"{name}.c"), self.ints[f"{name}.eps"])

    def _block(self, name, heads, window):
        i = self.ints
        attn = IntAttention(
            qkv=self._linear(f"{name}.attn.qkv"),
            score_mult=i[f"{name}.attn.score_mult"],
            score_shift=i[f"{name}.attn.score_shift"],
            alibi=self._t(f"{name}.attn.alibi"),
            exp=self._t("attn_exp"),
            out_mult=self._t(f"{name}.attn.out_mult"),
            out_shift=i[f"{name}.attn.out_shift"],
            proj=self._linear(f"{name}.attn.proj"),
            n_heads=heads,
            window=window,
        )
        mlp = IntMLP(
            self._linear(f"{name}.mlp.fc"),
            self._t(f"{name}.mlp.gelu"),
            self._linear(f"{name}.mlp.proj"),
        )
        return IntBlock(self._norm(f"{name}.norm1"), attn, self._norm(f"{name}.norm2"), mlp)

    def _build(self):
        c = self.config
        self.global_emb = self._t("global_emb")  # (P, 256, D_G) residual units
        self.global_pad = self._t("global_pad")  # (G,)
        self.global_blocks = [
            self._block(f"global.{i}", c.global_heads, c.window) for i in range(c.global_layers)
        ]
        self.global_norm = self._norm("global_norm")
        # per slot p: (P, D_G, L) float32 integers, and (P, L) multipliers
        self.to_local_w = self._t("to_local.w", torch.float32).transpose(1, 2).contiguous()
        self.to_local_mult = self._t("to_local.mult").reshape(-1)
        self.local_emb = self._t("local_emb")  # (257, L)
        self.local_blocks = [
            self._block(f"local.{i}", c.local_heads, None) for i in range(c.local_layers)
        ]
        self.local_norm = self._norm("local_norm")
        self.head = self._linear("head")
        self.out_exp = self._t("out_exp")

    def to(self, device, kernels=None) -> IntMegabyte:
        """This model on `device` (tables identical on every device). `kernels` picks a
        backend (megazip.kernels.TorchKernels or NumbaKernels); default: the fastest.
        Returns self when already there, else a new IntMegabyte sharing the canonical
        tensors: this object is never changed (as torch.Tensor.to)."""
        device = torch.device(device)
        kernels = kernels or kernels_for(device)
        if device == self.device and kernels is self.kernels:
            return self
        moved = copy.copy(self)
        moved.device, moved.kernels = device, kernels
        moved._build()
        return moved

    # -- identity
    def content_hash(self) -> str:
        """sha256 (hex) of the config, the scalar integers and every tensor (name, dtype,
        shape, bytes, in name order): the model's identity in .mgz headers."""
        if self._hash is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            h.update(json.dumps(self.ints, sort_keys=True).encode())
            for name in sorted(self.tensors):
                x = self.tensors[name].contiguous().cpu()
                h.update(f"{name}|{x.dtype}|{tuple(x.shape)}|".encode())
                a = x.numpy()
                h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())  # little-endian
            self._hash = h.hexdigest()
        return self._hash

    # -- the transformer, in integers
    def _attention(self, a: IntAttention, h, cache):
        """h (B, T, D) int8 values -> the attention's int8 output (B, T, D); keys and
        values go to `cache` (None: attend within these T positions only)."""
        kern = self.kernels
        B, T, D = h.shape
        cache = cache if cache is not None else IntKVCache(0)
        kbuf, vbuf, n = cache.reserve(B, a.n_heads, T, D // a.n_heads, kern.kv_dtype, h.device)
        q = kern.qkv_to_cache(a.qkv(h), a.qkv.mult, a.qkv.shift, kbuf, vbuf, n)  # (B,H,T,hd)
        lo, hi = cache.commit(T)  # keys lo..hi-1 of the buffers
        return kern.attend(
            q,
            kbuf,
            vbuf,
            lo,
            hi,
            a.score_mult,
            a.score_shift,
            a.alibi,
            a.window,
            a.exp,
            a.out_mult,
            a.out_shift,
        )

    def _stack(self, blocks: list[IntBlock], x, caches, final: IntNorm):
        """The residual stream x (B, T, D) int64 through `blocks` (pre-norm transformer
        blocks), then `final` norm: returns its int8 values (B, T, D). Each residual add is
        fused with the norm that reads its result."""
        kern = self.kernels
        after = [b.norm1 for b in blocks[1:]] + [final]
        h = kern.norm(x, blocks[0].norm1.c, blocks[0].norm1.eps)
        for b, cache, nxt in zip(blocks, caches, after, strict=True):
            p, m = b.attn.proj, b.mlp
            y = self._attention(b.attn, h, cache)
            x, h = kern.residual_norm(x, p(y), p.mult, p.shift, b.norm2.c, b.norm2.eps)
            g = kern.gelu(m.fc(h), m.fc.mult, m.fc.shift, m.gelu)
            x, h = kern.residual_norm(x, m.proj(g), m.proj.mult, m.proj.shift, nxt.c, nxt.eps)
        return h

    def new_state(self, batch: int) -> LaneState:
        return LaneState([IntKVCache(self.config.window - 1) for _ in self.global_blocks])

    @_exact
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
        h = self._stack(self.global_blocks, x, state.caches, self.global_norm)  # int8 values
        state.patches_done += K
        h = h.to(torch.float32).reshape(B * K, P, c.byte_dim).transpose(0, 1)
        acc = torch.bmm(h, self.to_local_w)  # (P, B*K, L): slot p uses its own weights
        acc = acc.transpose(0, 1).reshape(B * K, P * c.local_dim)
        out = self.kernels.requant_int(
            acc, self.to_local_mult, self.ints["to_local.shift"], RESIDUAL_LIMIT
        )
        return out.reshape(B, K, P, c.local_dim)

    def _counts(self, h):
        """Normalized local output (..., L) int8 values -> counts (..., 256), each >= 1,
        summing to COUNT_TOTAL (the remainder goes to the first most likely byte)."""
        acc = self.head(h)
        return self.kernels.counts(acc, self.head.mult, self.head.shift, self.out_exp, COUNT_TOTAL)

    @_exact
    def local_counts(self, patches: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Whole patches at once. patches (B, K, P) bytes, context (B, K, P, L) from
        global_context. Returns counts (B, K, P, 256) int64."""
        B, K, P = patches.shape
        pad = torch.full_like(patches[..., :1], PAD_BYTE)
        prev = torch.cat([pad, patches[..., :-1]], -1).long()
        x = (self.local_emb[prev] + context).reshape(B * K, P, -1)
        caches = [None] * len(self.local_blocks)
        h = self._stack(self.local_blocks, x, caches, self.local_norm)
        return self._counts(h).reshape(B, K, P, 256)

    def begin_patch(self, state: LaneState):
        """Reset the local caches before the first byte of a patch (byte-by-byte mode)."""
        state.local_caches = [IntKVCache(self.config.patch_size) for _ in self.local_blocks]

    @_exact
    def local_step(self, state: LaneState, prev_byte: torch.Tensor, context: torch.Tensor):
        """One byte for every lane. prev_byte (B,) the previous byte of this patch (PAD_BYTE
        at its start), context (B, L) this byte's slot of global_context. Returns counts
        (B, 256) int64."""
        x = (self.local_emb[prev_byte.long()] + context)[:, None]  # (B, 1, L)
        h = self._stack(self.local_blocks, x, state.local_caches, self.local_norm)
        return self._counts(h[:, 0])

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
            if s:
                prev = patches[:, s - 1 : s - 1 + chunk.shape[1]]
            else:  # the first row is replaced by the pad patch
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
