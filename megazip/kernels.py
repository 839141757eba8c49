"""Integer kernels of the coding model, in two backends that return identical integers.

`TorchKernels` is the reference: plain tensor ops, on any device. `NumbaKernels` fuses
each step into one compiled single-threaded loop on the CPU (numba), which removes most
of the memory traffic of the reference's many int64 elementwise ops (the GEMMs between
them keep torch's threads; a second thread pool would only fight them). Tests assert
both agree exactly.

Conventions: int8-valued activations travel as float32 tensors in TorchKernels (ready
for the exact float32 GEMMs) and as int8 tensors in NumbaKernels (for the int8 GEMM);
GEMM accumulators are int32, float32 (K <= 1024, exact) or float64 (sums of blocks,
exact below 2^53); residual streams are int64. Rounding is always
`(acc * mult + 2^(shift-1)) >> shift` (half up), then a clamp to [-limit, limit].
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .modelspec import MASKED, PROB_BITS, RESIDUAL_LIMIT  # noqa: F401 (re-exported)
from .nbkernels import (
    _nb_attend,
    _nb_attention,
    _nb_counts,
    _nb_gelu,
    _nb_norm,
    _nb_qkv_to_cache,
    _nb_requant,
    _nb_residual_norm,
)

# ------------------------------------------------------------------------- reference


def _rq(acc, mult, shift):
    return (acc.to(torch.int64) * mult + (1 << (shift - 1))) >> shift


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """Exact floor(sqrt(n)) of int64 n >= 0 (n < 2^62): a float64 estimate, then integer
    correction steps, so the result does not depend on the float sqrt's rounding."""
    r = torch.sqrt(n.to(torch.float64)).to(torch.int64)
    for _ in range(2):
        r = torch.where(r * r > n, r - 1, r)
    for _ in range(2):
        r = torch.where((r + 1) * (r + 1) <= n, r + 1, r)
    return r


class TorchKernels:
    name = "torch"
    kv_dtype = torch.float32  # of the KV caches

    @staticmethod
    def norm(x, c, eps):
        """RMSNorm of int64 rows x (M, D) to int8 values (float32): round(x*c / (r*2^16)),
        r = isqrt(floor(mean(x^2)) + eps)."""
        ms = torch.div((x * x).sum(-1, keepdim=True), x.shape[-1], rounding_mode="floor")
        r = isqrt(ms + eps) << 16
        y = torch.div(2 * x * c + r, 2 * r, rounding_mode="floor")
        return torch.clamp(y, -127, 127).to(torch.float32)

    @staticmethod
    def requant(acc, mult, shift, limit):
        """Accumulators (M, N) -> clamped integers as float32 (for the next GEMM)."""
        return torch.clamp(_rq(acc, mult, shift), -limit, limit).to(torch.float32)

    @staticmethod
    def qkv_to_cache(acc, mult, shift, kbuf, vbuf, n):
        """Accumulators (B, T, 3 * H * hd) -> queries (B, H, T, hd) returned; keys and
        values written to kbuf[:, :, n : n + T] and vbuf[...] (buffers (B, H, capacity,
        hd)). All requantized to int8 values."""
        B, T, _ = acc.shape
        H, hd = kbuf.shape[1], kbuf.shape[3]
        qkv = TorchKernels.requant(acc, mult, shift, 127).to(kbuf.dtype)
        q, k, v = (t.reshape(B, T, H, hd).transpose(1, 2) for t in qkv.split(H * hd, dim=-1))
        kbuf[:, :, n : n + T] = k
        vbuf[:, :, n : n + T] = v
        return q

    @staticmethod
    def residual_norm(x, acc, mult, shift, c, eps):
        """(x + requant(acc) clamped to the residual limit, norm of that with c, eps)."""
        x = TorchKernels.residual_add(x, acc, mult, shift)
        return x, TorchKernels.norm(x, c, eps)

    @staticmethod
    def requant_int(acc, mult, shift, limit):
        """Accumulators (M, N) -> clamped int64."""
        return torch.clamp(_rq(acc, mult, shift), -limit, limit)

    @staticmethod
    def residual_add(x, acc, mult, shift):
        """x + requant(acc), clamped to the residual limit (int64, new tensor)."""
        y = torch.clamp(_rq(acc, mult, shift), -RESIDUAL_LIMIT, RESIDUAL_LIMIT)
        return torch.clamp(x + y, -RESIDUAL_LIMIT, RESIDUAL_LIMIT)

    @staticmethod
    def gelu(acc, mult, shift, table):
        """Accumulators -> table indices (clamped) -> int8 GELU outputs as float32."""
        limit = (len(table) - 1) // 2
        idx = torch.clamp(_rq(acc, mult, shift), -limit, limit) + limit
        return table[idx].to(torch.float32)

    @staticmethod
    def attention_probs(scores, mult, shift, alibi, window, exp):
        """Integer softmax over keys. scores (B, H, T, S) q.k accumulators (float32) for
        the last T of S positions; logits = requant(score) - alibi[h, distance] in
        1/ATTN_UNIT nat, keys at distance < 0 or >= window (0: no limit) masked. Returns
        probabilities (float32 integers summing to ~2^15)."""
        T, S = scores.shape[-2:]
        dev = scores.device
        dist = torch.arange(S - T, S, device=dev)[:, None] - torch.arange(S, device=dev)
        visible = dist >= 0
        if window:
            visible &= dist < window
        penalty = alibi[:, dist.clamp(0, alibi.shape[1] - 1)]  # (H, T, S)
        logits = torch.where(visible, _rq(scores, mult, shift) - penalty, MASKED)
        z = logits.amax(-1, keepdim=True) - logits
        e = exp[z.clamp(max=len(exp) - 1)]
        den = e.sum(-1, keepdim=True)
        p = torch.div((e << PROB_BITS) + den // 2, den, rounding_mode="floor")
        return p.to(torch.float32)

    @staticmethod
    def attend(q, k, v, lo, hi, mult, shift, alibi, window, exp, out_mult, out_shift):
        """Attention of the last T of S = hi - lo positions, then requantization to int8:
        q (B, H, T, hd), keys and values k[:, :, lo:hi], v[:, :, lo:hi] of buffers (B, H,
        capacity, hd), all float32 integers. Returns (B, T, H * hd) float32:
        requant(attention_probs(q.k) @ v, out_mult (H * hd,), out_shift, 127). Every
        product is exact in float32 (hd * 128 * 127 < 2^24; (2^15 + S) * 128 < 2^24)."""
        B, H, T, hd = q.shape
        k, v = k[:, :, lo:hi], v[:, :, lo:hi]
        scores = q @ k.transpose(-1, -2)
        p = TorchKernels.attention_probs(scores, mult, shift, alibi, window, exp)
        y = (p @ v).transpose(1, 2).reshape(B, T, H * hd)
        return TorchKernels.requant(y, out_mult, out_shift, 127)

    @staticmethod
    def counts(acc, mult, shift, exp, total):
        """Head accumulators (M, 256) -> counts (M, 256) int64, each >= 1, summing to
        `total`; the remainder goes to the first most likely byte."""
        logits = torch.clamp(_rq(acc, mult, shift), -(1 << 40), 1 << 40)
        z = logits.amax(-1, keepdim=True) - logits
        e = exp[z.clamp(max=len(exp) - 1)]
        free = total - acc.shape[-1]
        counts = 1 + torch.div(e * free, e.sum(-1, keepdim=True), rounding_mode="floor")
        rest = total - counts.sum(-1, keepdim=True)
        return counts.scatter_add(-1, z.argmin(-1, keepdim=True), rest)


def _np(t: torch.Tensor) -> np.ndarray:
    """The array under a CPU tensor, without a copy (numba takes any strides)."""
    return t.numpy() if not t.requires_grad else t.detach().numpy()


def _rows(t: torch.Tensor) -> np.ndarray:
    """(..., N) -> (M, N) array."""
    return _np(t).reshape(-1, t.shape[-1])


def _out(a: np.ndarray, shape) -> torch.Tensor:
    return torch.from_numpy(a).view(shape)


class NumbaKernels:
    """The same integers as TorchKernels, from fused compiled loops (CPU tensors only).
    int8-valued activations (norm, GELU and attention outputs; queries, keys, values)
    are int8 tensors here, ready for the int8 GEMM and a quarter of the memory traffic.
    Outputs are allocated by numpy: a step makes a dozen calls, and wrapper costs count."""

    name = "numba"
    kv_dtype = torch.int8

    @staticmethod
    def norm(x, c, eps):
        xr = _rows(x)
        out = np.empty(xr.shape, np.int8)
        _nb_norm(xr, _np(c), eps, out)
        return _out(out, x.shape)

    @staticmethod
    def requant(acc, mult, shift, limit):
        """As TorchKernels.requant, to int8 (limit <= 127)."""
        a = _rows(acc)
        out = np.empty(a.shape, np.int8)
        _nb_requant(a, _np(mult).reshape(-1), shift, limit, out)
        return _out(out, acc.shape)

    @staticmethod
    def requant_int(acc, mult, shift, limit):
        a = _rows(acc)
        out = np.empty(a.shape, np.int64)
        _nb_requant(a, _np(mult).reshape(-1), shift, limit, out)
        return _out(out, acc.shape)

    @staticmethod
    def residual_norm(x, acc, mult, shift, c, eps):
        a = _rows(acc)
        xo = np.empty(a.shape, np.int64)
        ho = np.empty(a.shape, np.int8)
        _nb_residual_norm(_rows(x), a, _np(mult), shift, RESIDUAL_LIMIT, _np(c), eps, xo, ho)
        return _out(xo, x.shape), _out(ho, x.shape)

    @staticmethod
    def gelu(acc, mult, shift, table):
        a = _rows(acc)
        out = np.empty(a.shape, np.int8)
        _nb_gelu(a, _np(mult), shift, _np(table), out)
        return _out(out, acc.shape)

    @staticmethod
    def attention_probs(scores, mult, shift, alibi, window, exp):
        B, H, T, S = scores.shape
        out = np.empty((B * H, T, S), np.float32)
        sc = _np(scores).reshape(B * H, T, S)
        _nb_attention(sc, mult, shift, _np(alibi), window or 0, _np(exp), out)
        return _out(out, (B, H, T, S))

    @staticmethod
    def qkv_to_cache(acc, mult, shift, kbuf, vbuf, n):
        B, T, _ = acc.shape
        q = np.empty((B, kbuf.shape[1], T, kbuf.shape[3]), np.int8)
        _nb_qkv_to_cache(_np(acc), _np(mult).reshape(-1), shift, _np(kbuf), _np(vbuf), n, q)
        return torch.from_numpy(q)

    @staticmethod
    def attend(q, k, v, lo, hi, mult, shift, alibi, window, exp, out_mult, out_shift):
        """TorchKernels.attend for int8 (or float32) q, k, v."""
        B, H, T, hd = q.shape
        if T * (hi - lo) > 1024:  # long blocks: BLAS for the products, numba softmax
            q, k, v = (t.to(torch.float32) for t in (q, k[:, :, lo:hi], v[:, :, lo:hi]))
            scores = q @ k.transpose(-1, -2)
            p = NumbaKernels.attention_probs(scores, mult, shift, alibi, window, exp)
            y = (p @ v).transpose(1, 2).reshape(B, T, H * hd)
            return NumbaKernels.requant(y, out_mult, out_shift, 127)
        if q.dtype != torch.int8:
            q, k, v = (t.to(torch.int8) for t in (q, k, v))
        out = np.empty((B, T, H * hd), np.int8)  # short: one fused loop
        _nb_attend(
            _np(q),
            _np(k),  # whole buffers, no copies
            _np(v),
            lo,
            hi,
            mult,
            shift,
            _np(alibi),
            window or 0,
            _np(exp),
            _np(out_mult).reshape(-1),
            out_shift,
            out,
        )
        return torch.from_numpy(out)

    @staticmethod
    def counts(acc, mult, shift, exp, total):
        a = _rows(acc)
        out = np.empty(a.shape, np.int64)
        _nb_counts(a, _np(mult), shift, _np(exp), total, out)
        return _out(out, acc.shape)


def kernels_for(device: torch.device):
    """NumbaKernels on the CPU (unless MEGAZIP_KERNELS=torch), else the reference
    TorchKernels."""
    choice = os.environ.get("MEGAZIP_KERNELS", "auto")
    if device.type == "cpu" and choice != "torch":
        return NumbaKernels
    return TorchKernels
