"""The integer kernels of the coding model as fused compiled loops (numba), torch-free.

Each kernel computes exactly the integers of the reference (megazip/kernels.py,
TorchKernels); megazip/kernels.py wraps them for torch tensors (NumbaKernels) and
megazip/npmodel.py calls them on numpy arrays. Rounding is always
`(acc * mult + 2^(shift-1)) >> shift` (half up), then a clamp to [-limit, limit].
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .modelspec import COUNT_TOTAL, RESIDUAL_LIMIT

_jit = nb.njit(cache=True, nogil=True, fastmath=False)


@_jit
def _floordiv(n, d, inv):
    """floor(n / d) for int64 n and d > 0 with |n / d| < 2^50, given inv = 1.0 / d: a
    float64 estimate (relative error < 2^-51, so within 1 of the quotient), then one
    integer correction each way. Branch-free and exact; an int64 division costs ~10x
    more, and these run once per element."""
    q = np.int64(np.floor(np.float64(n) * inv))
    q -= np.int64(q * d > n)
    q += np.int64((q + 1) * d <= n)
    return q


@_jit
def _norm_row(x, ss, c, eps, out):
    """out = norm of the int64 row x, given ss = sum(x^2) (TorchKernels.norm)."""
    D = x.shape[0]
    n = ss // D + eps
    r = np.int64(np.sqrt(np.float64(n)))
    while r * r > n:
        r -= 1
    while (r + 1) * (r + 1) <= n:
        r += 1
    r <<= 16
    d = 2 * r
    inv = 1.0 / np.float64(d)
    for j in range(D):  # branch-free, so LLVM vectorizes it
        t = 2 * x[j] * c[j] + r
        # float estimate of floor(t / d), clamped to [-129, 128]: within 1 of the
        # exact quotient when that is in [-128, 127], on its side of the range if not
        y = np.int64(min(max(np.floor(np.float64(t) * inv), -129.0), 128.0))
        y -= np.int64(y * d > t)
        y += np.int64((y + 1) * d <= t)
        out[j] = min(max(y, -127), 127)  # = clamp(floor(t / d), -127, 127)


@_jit
def _nb_norm(x, c, eps, out):
    M, D = x.shape
    for i in range(M):
        ss = 0
        for j in range(D):
            ss += x[i, j] * x[i, j]
        _norm_row(x[i], ss, c, eps, out[i])


@_jit
def _nb_residual_norm(x, acc, mult, shift, limit, c, eps, xo, ho):
    M, N = acc.shape
    half = np.int64(1) << (shift - 1)
    for i in range(M):
        ss = 0
        for j in range(N):
            y = (np.int64(acc[i, j]) * mult[j] + half) >> shift
            y = min(max(y, -limit), limit) + x[i, j]
            y = min(max(y, -limit), limit)
            xo[i, j] = y
            ss += y * y
        _norm_row(xo[i], ss, c, eps, ho[i])


@_jit
def _nb_qkv_to_cache(acc, mult, shift, kbuf, vbuf, n, q):
    B, T, _ = acc.shape
    H, hd = kbuf.shape[1], kbuf.shape[3]
    half = np.int64(1) << (shift - 1)
    for b in range(B):
        for t in range(T):
            for h in range(H):
                c = h * hd  # q, then k at c + H * hd, then v
                qr, kr, vr = q[b, h, t], kbuf[b, h, n + t], vbuf[b, h, n + t]
                for j in range(hd):
                    y = (np.int64(acc[b, t, c + j]) * mult[c + j] + half) >> shift
                    qr[j] = min(max(y, -127), 127)
                c += H * hd
                for j in range(hd):
                    y = (np.int64(acc[b, t, c + j]) * mult[c + j] + half) >> shift
                    kr[j] = min(max(y, -127), 127)
                c += H * hd
                for j in range(hd):
                    y = (np.int64(acc[b, t, c + j]) * mult[c + j] + half) >> shift
                    vr[j] = min(max(y, -127), 127)


@_jit
def _nb_requant(acc, mult, shift, limit, out):
    M, N = acc.shape
    half = np.int64(1) << (shift - 1)
    for i in range(M):
        for j in range(N):
            y = (np.int64(acc[i, j]) * mult[j] + half) >> shift
            out[i, j] = min(max(y, -limit), limit)


@_jit
def _nb_gelu(acc, mult, shift, table, out):
    M, N = acc.shape
    limit = (table.shape[0] - 1) // 2
    half = np.int64(1) << (shift - 1)
    idx = np.empty(N, np.int64)
    for i in range(M):
        for j in range(N):  # vectorized, then the gathers
            y = (np.int64(acc[i, j]) * mult[j] + half) >> shift
            idx[j] = min(max(y, -limit), limit) + limit
        for j in range(N):
            out[i, j] = table[idx[j]]


@_jit
def _nb_attention(scores, mult, shift, alibi, window, exp, out):
    R, T, S = scores.shape  # rows = B * H, head = row % H
    H = alibi.shape[0]
    maxd = alibi.shape[1] - 1
    E = exp.shape[0] - 1
    half = np.int64(1) << (shift - 1)
    for r in range(R):
        h = r % H
        logits = np.empty(S, np.int64)
        for t in range(T):
            q = S - T + t
            lo = 0 if window == 0 else max(0, q - window + 1)
            top = np.int64(-(1 << 62))
            for s in range(lo, q + 1):
                v = ((np.int64(scores[r, t, s]) * mult + half) >> shift) - alibi[
                    h, min(q - s, maxd)
                ]
                logits[s] = v
                top = max(top, v)
            den = np.int64(0)
            for s in range(lo, q + 1):
                e = exp[min(top - logits[s], E)]
                logits[s] = e
                den += e
            for s in range(S):
                out[r, t, s] = 0.0
            inv = 1.0 / np.float64(den)
            for s in range(lo, q + 1):
                out[r, t, s] = _floordiv((logits[s] << 15) + den // 2, den, inv)  # <= 2^15


# Every partial sum below is an integer below 2^24, exact in float32 in any order, so
# LLVM may reassociate (vectorize) the sums. (No numba threads here: a parallel=True
# numba kernel in the same process was seen to slow torch's int8 GEMM 400-fold.)
@nb.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _nb_attend(q, k, v, lo, hi, mult, shift, alibi, window, exp, out_mult, out_shift, out):
    B, H, T, hd = q.shape  # int8; k, v: (B, H, capacity, hd) int8, keys lo..hi-1
    S = hi - lo  # out (B, T, H * hd) int8
    maxd = alibi.shape[1] - 1
    E = exp.shape[0] - 1
    half = np.int64(1) << (shift - 1)
    ohalf = np.int64(1) << (out_shift - 1)
    w = np.empty(S, np.int64)
    qf = np.empty(hd, np.float32)
    y = np.empty(hd, np.float32)
    sc = np.empty(S, np.float32)
    for b in range(B):
        for h in range(H):
            kb, vb = k[b, h], v[b, h]
            for t in range(T):
                pos = S - T + t
                first = 0 if window == 0 else max(0, pos - window + 1)
                for j in range(hd):
                    qf[j] = q[b, h, t, j]
                for s in range(first, pos + 1):
                    acc = np.float32(0.0)  # |q.k| <= hd * 128 * 128 < 2^24: exact
                    for j in range(hd):
                        acc += qf[j] * np.float32(kb[lo + s, j])
                    sc[s] = acc
                top = np.int64(-(1 << 62))
                for s in range(first, pos + 1):
                    d = min(pos - s, maxd)
                    logit = ((np.int64(sc[s]) * mult + half) >> shift) - alibi[h, d]
                    w[s] = logit
                    top = max(top, logit)
                den = np.int64(0)
                for s in range(first, pos + 1):
                    e = exp[min(top - w[s], E)]
                    w[s] = e
                    den += e
                for j in range(hd):
                    y[j] = 0.0
                inv = 1.0 / np.float64(den)
                for s in range(first, pos + 1):
                    p = np.float32(_floordiv((w[s] << 15) + den // 2, den, inv))  # <= 2^15
                    for j in range(hd):  # |y| <= (2^15 + S) * 128 < 2^24: exact
                        y[j] += p * np.float32(vb[lo + s, j])
                for j in range(hd):
                    c = h * hd + j
                    r = (np.int64(y[j]) * out_mult[c] + ohalf) >> out_shift
                    out[b, t, c] = min(max(r, -127), 127)  # int8


@_jit
def _nb_counts(acc, mult, shift, exp, total, out):
    """Each row's counts (_counts_row: every count >= 1, the row sums to `total`)."""
    M, N = acc.shape
    for i in range(M):
        _counts_row(acc[i], mult, 0, shift, exp, total, N, out[i])


# ------------------------------------------------------------- the fused local step
# The decoder's per-byte work, the whole local model for every lane (all layers, the
# head, the counts), in one compiled call: the same integers as IntMegabyte.local_step
# (each op below is the per-row form of a kernel above). Weights are int8, converted to
# float32 as they are used: every product and partial sum is an integer below 2^24 (K <=
# 1024), exact in any order, so LLVM may reassociate the sums.

LAYER_FIELDS = 24
HEAD_FIELDS = 16


class LocalPack:
    """The local model's integers packed for local_step_fused: w (int8: every weight
    matrix, (K, N) row-major), i64 (multipliers, norm gains, tables, embeddings) and
    layout (int64 offsets and scalars; see pack_local); vw, vc: each weight matrix's
    VNNI pack and column sums (layer by layer qkv, proj, fc, mlp_proj, then the head;
    empty arrays where the CPU has no VNNI)."""

    def __init__(self, w, i64, layout, kv_tail, vw, vc):
        self.w, self.i64, self.layout, self.kv_tail = w, i64, layout, kv_tail
        self.vw, self.vc = vw, vc


def pack_local(m) -> LocalPack:
    """LocalPack of the local model of a model with NpMegabyte's attributes (local_blocks,
    local_emb, local_norm, head)."""
    kv_tail = (
        m.local_blocks[0].heads,
        m.config.patch_size,
        m.local_emb.shape[1] // m.local_blocks[0].heads,
    )
    return _pack(m.local_blocks, m.local_norm, m.local_emb, m.head, kv_tail)


def pack_global(m) -> LocalPack:
    """LocalPack of the global model's blocks and final norm (no embedding or head: for
    global_step_fused)."""
    return _pack(m.global_blocks, m.global_norm, None, None, None)


def _pack(blocks, final_norm, emb, head, kv_tail) -> LocalPack:
    """LocalPack of `blocks` and `final_norm`, with an embedding table and a head where
    given (layout fields 4 and 7-10 are 0 without them)."""
    ws: list[np.ndarray] = []
    ints: list[np.ndarray] = []
    sizes = [0, 0]
    vw: list[np.ndarray] = []
    vc: list[np.ndarray] = []

    def put_w(lin) -> int:
        off = sizes[0]
        w = np.ascontiguousarray(lin.w).astype(np.int8)  # (K, N) float32 integers
        ws.append(w.reshape(-1))
        sizes[0] += w.size
        return off

    def put_vnni(lin) -> None:
        wp, cs = lin.vnni if lin.vnni is not None else (None, None)
        vw.append(np.zeros((0, 0), np.int32) if wp is None else wp)
        vc.append(np.zeros(0, np.int32) if cs is None else cs)

    def put_i(a) -> int:
        off = sizes[1]
        a = np.ascontiguousarray(a, dtype=np.int64).reshape(-1)
        ints.append(a)
        sizes[1] += a.size
        return off

    L = blocks[0].qkv.w.shape[0]
    H = blocks[0].heads
    layout = np.zeros(HEAD_FIELDS + LAYER_FIELDS * len(blocks), np.int64)
    layout[0:4] = len(blocks), L, blocks[0].fc.w.shape[1], H
    layout[4] = put_i(emb) if emb is not None else 0
    layout[5], layout[6] = put_i(final_norm.c), final_norm.eps
    if head is not None:
        layout[7], layout[8], layout[9] = put_w(head), put_i(head.mult), head.shift
        layout[10] = head.w.shape[1]
    for i, b in enumerate(blocks):
        f = HEAD_FIELDS + LAYER_FIELDS * i
        layout[f : f + 4] = put_w(b.qkv), put_w(b.proj), put_w(b.fc), put_w(b.mlp_proj)
        layout[f + 4 : f + 8] = (
            put_i(b.qkv.mult),
            put_i(b.proj.mult),
            put_i(b.fc.mult),
            put_i(b.mlp_proj.mult),
        )
        layout[f + 8 : f + 12] = b.qkv.shift, b.proj.shift, b.fc.shift, b.mlp_proj.shift
        layout[f + 12 : f + 16] = put_i(b.norm1.c), b.norm1.eps, put_i(b.norm2.c), b.norm2.eps
        layout[f + 16 : f + 20] = b.score_mult, b.score_shift, put_i(b.out_mult), b.out_shift
        layout[f + 20 : f + 22] = put_i(b.alibi), b.alibi.shape[1]
        layout[f + 22 : f + 24] = put_i(b.gelu), b.gelu.shape[0]
        for lin in (b.qkv, b.proj, b.fc, b.mlp_proj):
            put_vnni(lin)
    if head is not None:
        put_vnni(head)
    w = np.concatenate(ws) if ws else np.zeros(0, np.int8)
    i64 = np.concatenate(ints) if ints else np.zeros(0, np.int64)
    return LocalPack(w, i64, layout, kv_tail, tuple(vw), tuple(vc))


@nb.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def gemm_i8(x, W, acc):
    """acc (M, N) float32 = x (M, K) float32 integers @ W (K, N) int8, exact for K <=
    1024 (every partial sum an integer below 2^24): the weights of four rows of K are
    read once for all M rows (few rows: faster than BLAS, and a quarter of the memory
    traffic of float32 weights); quads of zero inputs are skipped."""
    M, K = x.shape
    N = W.shape[1]
    for m in range(M):
        for n in range(N):
            acc[m, n] = 0.0
    k = 0
    while k + 4 <= K:
        w0, w1, w2, w3 = W[k], W[k + 1], W[k + 2], W[k + 3]
        for m in range(M):
            x0, x1, x2, x3 = x[m, k], x[m, k + 1], x[m, k + 2], x[m, k + 3]
            if x0 != 0.0 or x1 != 0.0 or x2 != 0.0 or x3 != 0.0:
                a = acc[m]
                for n in range(N):
                    a[n] += (
                        x0 * np.float32(w0[n])
                        + x1 * np.float32(w1[n])
                        + x2 * np.float32(w2[n])
                        + x3 * np.float32(w3[n])
                    )
        k += 4
    while k < K:
        wk = W[k]
        for m in range(M):
            xk = x[m, k]
            if xk != 0.0:
                a = acc[m]
                for n in range(N):
                    a[n] += xk * np.float32(wk[n])
        k += 1


@_jit
def _weights(w, off, K, N):
    return w[off : off + K * N].reshape((K, N))


@_jit
def _counts_row(acc, mult, moff, shift, exp, total, N, out):
    """The N counts of one row of logits acc (requantized by mult[moff:], then an integer
    softmax): every count >= 1, their sum exactly `total`, the remainder to the largest
    logit (the first of equals); quotients are at most total - N."""
    E = exp.shape[0] - 1
    half = np.int64(1) << (shift - 1)
    lim = np.int64(1) << 40
    free = total - N
    logits = np.empty(N, np.int64)
    top = -lim
    best = 0
    for j in range(N):
        v = (np.int64(acc[j]) * mult[moff + j] + half) >> shift
        v = min(max(v, -lim), lim)
        logits[j] = v
        if v > top:
            top, best = v, j
    den = np.int64(0)
    for j in range(N):
        logits[j] = exp[min(top - logits[j], E)]
        den += logits[j]
    used = np.int64(0)
    inv = 1.0 / np.float64(den)
    for j in range(N):
        cnt = 1 + _floordiv(logits[j] * free, den, inv)  # quotient <= free
        out[j] = cnt
        used += cnt
    out[best] += total - used


@_jit
def _gemm32(x, w, off, K, N, vw, vc, out):
    """out (M, N) int32 = x (M, K) int8 values @ the (K, N) int8 weights at w[off]: with
    their VNNI pack (vw non-empty) gemm_vnni, else gemm_i8 (exact float32 sums of
    magnitude below 2^24, converted). The same integers either way."""
    if vw.shape[0] != 0:
        gemm_vnni(x, vw, vc, out)
        return
    acc = np.empty((x.shape[0], N), np.float32)
    gemm_i8(x, _weights(w, off, K, N), acc)
    for m in range(x.shape[0]):
        for n in range(N):
            out[m, n] = np.int32(acc[m, n])


@_jit
def _blocks(x, h, kbufs, vbufs, ns, los, his, window, w, i64, layout, vws, vcs, attn_exp):
    """The transformer blocks of a LocalPack layout over one position of every lane: x
    (B, D) int64 the residual stream in, h (B, D) float32 its first norm in, the final
    norm's output out; block li's key and value go to position ns[li] of kbufs[li],
    vbufs[li] (B, H, capacity, hd) int8, and it attends to the keys [los[li], his[li])
    (window: as NpMegabyte's attention). The layered path's kernels (_nb_qkv_to_cache,
    _nb_attend, _nb_residual_norm, _nb_gelu) and int8 GEMMs (_gemm32): its integers."""
    B = x.shape[0]
    n_layers, L, F, H = layout[0], layout[1], layout[2], layout[3]
    hd = L // H
    xo = np.empty((B, L), np.int64)
    y = np.empty((B, 1, L), np.float32)
    yl = y.reshape(B, L)
    g = np.empty((B, F), np.float32)
    aq = np.empty((B, 3 * L), np.int32)
    aq3 = aq.reshape(B, 1, 3 * L)
    al = np.empty((B, L), np.int32)
    af = np.empty((B, F), np.int32)
    q = np.empty((B, H, 1, hd), np.int8)
    for li in range(n_layers):
        f = HEAD_FIELDS + LAYER_FIELDS * li
        _gemm32(h, w, layout[f], L, 3 * L, vws[4 * li], vcs[4 * li], aq)
        qkv_mult = i64[layout[f + 4] : layout[f + 4] + 3 * L]
        _nb_qkv_to_cache(aq3, qkv_mult, layout[f + 8], kbufs[li], vbufs[li], ns[li], q)
        aoff, awidth = layout[f + 20], layout[f + 21]
        alibi = i64[aoff : aoff + H * awidth].reshape(H, awidth)
        omult = i64[layout[f + 18] : layout[f + 18] + L]
        smult, sshift, oshift = layout[f + 16], layout[f + 17], layout[f + 19]
        kb, vb, lo, hi = kbufs[li], vbufs[li], los[li], his[li]
        _nb_attend(q, kb, vb, lo, hi, smult, sshift, alibi, window, attn_exp, omult, oshift, y)
        _gemm32(yl, w, layout[f + 1], L, L, vws[4 * li + 1], vcs[4 * li + 1], al)
        pmult = i64[layout[f + 5] : layout[f + 5] + L]
        c2 = i64[layout[f + 14] : layout[f + 14] + L]
        _nb_residual_norm(x, al, pmult, layout[f + 9], RESIDUAL_LIMIT, c2, layout[f + 15], xo, h)
        x, xo = xo, x
        # MLP
        _gemm32(h, w, layout[f + 2], L, F, vws[4 * li + 2], vcs[4 * li + 2], af)
        fmult = i64[layout[f + 6] : layout[f + 6] + F]
        gelu = i64[layout[f + 22] : layout[f + 22] + layout[f + 23]]
        _nb_gelu(af, fmult, layout[f + 10], gelu, g)
        _gemm32(g, w, layout[f + 3], F, L, vws[4 * li + 3], vcs[4 * li + 3], al)
        if li + 1 < n_layers:
            nc, neps = layout[f + LAYER_FIELDS + 12], layout[f + LAYER_FIELDS + 13]
        else:
            nc, neps = layout[5], layout[6]
        mmult = i64[layout[f + 7] : layout[f + 7] + L]
        _nb_residual_norm(
            x, al, mmult, layout[f + 11], RESIDUAL_LIMIT, i64[nc : nc + L], neps, xo, h
        )
        x, xo = xo, x


@_jit
def local_step_fused(prev, ctx, pos, kc, vc, w, i64, layout, vws, vcs, attn_exp, out_exp, out):
    """The whole local model for one byte of every lane (IntMegabyte.local_step) in one
    call: prev (B,) previous bytes (PAD_BYTE at a patch start), ctx (B, L) int64 slots of
    the global context, pos the byte's position in its patch; kc, vc (layers, B, H, P,
    hd) int8 caches of the patch's keys and values (position pos is written); counts
    (B, 256) int64 into out. _blocks, then the head and _nb_counts: the layered path's
    integers without a Python call per kernel."""
    B = prev.shape[0]
    n_layers, L = layout[0], layout[1]
    V = layout[10]
    x = np.empty((B, L), np.int64)
    h = np.empty((B, L), np.float32)
    for b in range(B):
        e0 = layout[4] + prev[b] * L
        for j in range(L):
            x[b, j] = i64[e0 + j] + ctx[b, j]
    f0 = HEAD_FIELDS
    _nb_norm(x, i64[layout[f0 + 12] : layout[f0 + 12] + L], layout[f0 + 13], h)
    at = np.full(n_layers, pos, np.int64)
    _blocks(x, h, kc, vc, at, at - pos, at + 1, 0, w, i64, layout, vws, vcs, attn_exp)
    av = np.empty((B, V), np.int32)
    _gemm32(h, w, layout[7], L, V, vws[4 * n_layers], vcs[4 * n_layers], av)
    _nb_counts(av, i64[layout[8] : layout[8] + V], layout[9], out_exp, COUNT_TOTAL, out)


@_jit
def global_step_fused(x, kbufs, vbufs, ns, los, his, window, w, i64, layout, vws, vcs, attn_exp, h):
    """One patch of the global model for every lane (NpMegabyte.global_context with one
    patch) in one call: x (B, D) int64 the patch's embeddings; block li's key and value
    go to position ns[li] of its cache buffers kbufs[li], vbufs[li] (B, H, capacity, hd)
    int8 and it attends to the keys [los[li], his[li]) within `window`; the final norm's
    output (B, D) float32 into h. The layered path's integers."""
    L = layout[1]
    f0 = HEAD_FIELDS
    _nb_norm(x, i64[layout[f0 + 12] : layout[f0 + 12] + L], layout[f0 + 13], h)
    _blocks(x, h, kbufs, vbufs, ns, los, his, window, w, i64, layout, vws, vcs, attn_exp)


# ------------------------------------------------------------- int8 GEMM with AVX-512 VNNI
# vpdpbusd multiplies 4 unsigned bytes by 4 signed bytes and adds the 4 products to an
# int32, 16 lanes at a time: x (int8 values, shifted by +128 to unsigned) times int8
# weights, then x @ w = (x + 128) @ w - 128 * colsum(w). Every sum is an int32 integer
# (|acc| <= 255 * 127 * K < 2^31 for K <= 65536): exact by construction, like torch's
# int8 GEMM. Used only where the CPU has the instruction (VNNI); 7-20x the float32 GEMMs.


def _cpu_has_vnni() -> bool:
    import os

    if os.environ.get("MEGAZIP_VNNI", "1") == "0":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx512_vnni", "avx512bw", "avx512f"} <= flags
    except OSError:
        return False
    return False


VNNI = _cpu_has_vnni()
VNNI_MR, VNNI_NV = 4, 4  # a tile: 4 rows x 64 columns (16 int32 accumulators)
VNNI_N = 16 * VNNI_NV  # weight columns are padded to a multiple of this
VNNI_MAX_K = 1 << 16


def _vnni_tile_codegen(context, builder, signature, args):
    from llvmlite import ir
    from numba.core import cgutils

    i32 = ir.IntType(32)
    v16 = ir.VectorType(i32, 16)
    xa = context.make_array(signature.args[0])(context, builder, args[0])
    wa = context.make_array(signature.args[2])(context, builder, args[2])
    oa = context.make_array(signature.args[4])(context, builder, args[4])
    m, n0 = args[1], args[3]
    kq_n = cgutils.unpack_tuple(builder, xa.shape, 2)[1]
    n_cols = cgutils.unpack_tuple(builder, wa.shape, 2)[1]
    fnty = ir.FunctionType(v16, [v16, v16, v16])
    dp = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.512")
    zero = ir.Constant(v16, [0] * 16)
    accs = [
        [cgutils.alloca_once_value(builder, zero) for _ in range(VNNI_NV)] for _ in range(VNNI_MR)
    ]
    rows = [
        builder.gep(xa.data, [builder.mul(builder.add(m, ir.Constant(m.type, r)), kq_n)])
        for r in range(VNNI_MR)
    ]
    vp = v16.as_pointer()
    with cgutils.for_range(builder, kq_n) as loop:
        kq = loop.index
        base = builder.add(builder.mul(kq, n_cols), n0)
        wv = []
        for i in range(VNNI_NV):
            p = builder.gep(wa.data, [builder.add(base, ir.Constant(base.type, 16 * i))])
            wv.append(builder.load(builder.bitcast(p, vp), align=4))
        for r in range(VNNI_MR):
            a = builder.load(builder.gep(rows[r], [kq]))
            s = builder.insert_element(ir.Constant(v16, ir.Undefined), a, ir.Constant(i32, 0))
            s = builder.shuffle_vector(s, ir.Constant(v16, ir.Undefined), zero)
            for i in range(VNNI_NV):
                acc = builder.load(accs[r][i])
                builder.store(builder.call(dp, [acc, s, wv[i]]), accs[r][i])
    for r in range(VNNI_MR):
        ob = builder.add(builder.mul(builder.add(m, ir.Constant(m.type, r)), n_cols), n0)
        for i in range(VNNI_NV):
            p = builder.gep(oa.data, [builder.add(ob, ir.Constant(ob.type, 16 * i))])
            builder.store(builder.load(accs[r][i]), builder.bitcast(p, vp), align=4)
    return context.get_dummy_value()


@nb.extending.intrinsic
def _vnni_tile(typingctx, xu, m, wp, n0, out):
    """out[m : m + 4, n0 : n0 + 64] = xu[m : m + 4] @ wp[:, n0 : n0 + 64] (vpdpbusd):
    xu (Mp, KQ) int32 of 4 unsigned bytes, wp (KQ, Np) int32 of 4 signed bytes."""
    return nb.types.void(xu, m, wp, n0, out), _vnni_tile_codegen


@_jit
def gemm_vnni(x, wp, colsum, out):
    """out (M, N) int32 = x (M, K) int8 values (any numeric dtype) @ W, W packed by
    pack_vnni (wp (ceil(K / 4), Np) int32, colsum (Np,) int32): exact."""
    M, K = x.shape
    KQ, Np = wp.shape
    N = out.shape[1]
    Mp = -(-M // VNNI_MR) * VNNI_MR
    xu = np.empty((Mp, KQ), np.int32)
    for m in range(Mp):
        for q in range(KQ):
            v = np.uint32(0)
            for j in range(4):
                k = 4 * q + j
                b = np.uint32(128)
                if m < M and k < K:
                    b = np.uint32(np.int64(x[m, k]) + 128)
                v |= b << np.uint32(8 * j)
            xu[m, q] = np.int32(np.int64(v) - (np.int64(1) << 32) if v >= (1 << 31) else v)
    tmp = np.empty((Mp, Np), np.int32)
    for n0 in range(0, Np, VNNI_N):  # a 64-column block of W stays in L1 for all rows
        for m in range(0, Mp, VNNI_MR):
            _vnni_tile(xu, m, wp, n0, tmp)
    for m in range(M):
        for n in range(N):
            out[m, n] = tmp[m, n] - 128 * colsum[n]


def pack_vnni(w8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) int8 weights -> (wp (ceil(K / 4), Np) int32: 4 consecutive rows' bytes per
    int32, columns padded with zeros to Np, a multiple of 64; colsum (Np,) int32)."""
    K, N = w8.shape
    Kp, Np = -(-K // 4) * 4, -(-N // VNNI_N) * VNNI_N
    w = np.zeros((Kp, Np), np.int8)
    w[:K, :N] = w8
    wp = np.ascontiguousarray(w.reshape(Kp // 4, 4, Np).transpose(0, 2, 1)).view("<i4")
    colsum = w.astype(np.int64).sum(0).astype(np.int32)
    return np.ascontiguousarray(wp.reshape(Kp // 4, Np)).astype(np.int32), colsum
