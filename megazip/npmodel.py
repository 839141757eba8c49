"""The integer coding model on the CPU without torch: numpy GEMMs and numba kernels.

NpMegabyte computes exactly the count tables of megazip/intmodel.py's IntMegabyte (the
reference, and the CUDA path), from the same NAME.int_model.safetensors file, with the
same methods (count_tables, global_context, begin_patch, local_step, ...) on numpy
arrays. Its exactness rests on the same facts:

- every matmul is an int8 GEMM with int32 sums (AVX-512 VNNI, nbkernels.gemm_vnni, where
  the CPU has it: exact by construction), or else a float32 GEMM (numba over int8
  weights for few rows, BLAS beyond) on integer-valued operands, |x|, |w| <= 127, with
  K <= GEMM_BLOCK, so every partial sum is an integer below 2^24 and exact in any
  summation order; larger K is split into such blocks summed in float64 (exact below
  2^53);
- everything else runs in the numba kernels of megazip/nbkernels.py, the very integer
  code IntMegabyte's NumbaKernels backend runs.

Importing this module costs numpy, numba and the kernels' cached machine code: no torch,
so a CPU compress or decompress starts in well under a second. The decoder's per-byte
step (local_step) runs the whole local model (every layer, the head, the counts) for all
lanes in one compiled call (nbkernels.local_step_fused) for few lanes, else layer by
layer with the GEMMs above.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from . import nbkernels as nbk
from .modelspec import (
    COUNT_TOTAL,
    GEMM_BLOCK,
    PAD_BYTE,
    RESIDUAL_LIMIT,
    MegabyteConfig,
    SlidingKVCache,
)

FUSED_MAX_LANES = (1 << 30) if nbk.VNNI else 64  # local_step: one compiled call for all
# layers up to this many lanes (the layered path's kernels without a Python call each:
# per step 0.078 vs 0.101 ms at 19 lanes, 0.234 vs 0.261 ms at 64), then layer by layer,
# which without VNNI takes BLAS from 64 rows on
SMALL_GEMM_ROWS = 64  # Linear: numba's int8-weight GEMM up to this many rows, then BLAS

# numpy dtype -> the torch dtype name that IntMegabyte.content_hash writes
_TORCH_DTYPE = {
    "int8": "torch.int8",
    "int16": "torch.int16",
    "int32": "torch.int32",
    "int64": "torch.int64",
    "uint8": "torch.uint8",
    "float32": "torch.float32",
    "float64": "torch.float64",
    "bool": "torch.bool",
}


def int_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact x @ w for integer-valued x (M, K) float32, |x| <= 127, and w (K, N) float32
    integers, |w| <= 127: float32 (K <= GEMM_BLOCK) or float64 (sums of such blocks)."""
    K = x.shape[-1]
    if K <= GEMM_BLOCK:
        return x @ w
    acc = None
    for k0 in range(0, K, GEMM_BLOCK):
        part = (x[..., k0 : k0 + GEMM_BLOCK] @ w[k0 : k0 + GEMM_BLOCK]).astype(np.float64)
        acc = part if acc is None else acc + part
    return acc


@dataclass
class Linear:
    w: np.ndarray  # (K, N) float32 integers in [-127, 127]
    mult: np.ndarray  # (N,) int64
    shift: int
    w8: np.ndarray  # the same (K, N) as int8
    vnni: tuple | None = None  # nbkernels.pack_vnni(w8) where the CPU has AVX-512 VNNI

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x (..., K) float32 integers -> accumulators (M, N) (M: all leading dims):
        with AVX-512 VNNI the int8 GEMM (int32), else up to SMALL_GEMM_ROWS rows the
        numba int8-weight GEMM and BLAS beyond (float32). All exact."""
        x = x.reshape(-1, x.shape[-1])
        M, K = x.shape
        if self.vnni is not None:
            acc = np.empty((M, self.w8.shape[1]), np.int32)
            nbk.gemm_vnni(np.ascontiguousarray(x), self.vnni[0], self.vnni[1], acc)
            return acc
        if M <= SMALL_GEMM_ROWS and K <= GEMM_BLOCK:
            acc = np.empty((M, self.w8.shape[1]), np.float32)
            nbk.gemm_i8(np.ascontiguousarray(x), self.w8, acc)
            return acc
        return int_matmul(x, self.w)


@dataclass
class Norm:
    c: np.ndarray  # (D,) int64
    eps: int


@dataclass
class Block:
    norm1: Norm
    qkv: Linear
    score_mult: int
    score_shift: int
    alibi: np.ndarray  # (H, max distance) int64
    out_mult: np.ndarray  # (D,) int64
    out_shift: int
    proj: Linear
    norm2: Norm
    fc: Linear
    gelu: np.ndarray  # (2 * limit + 1,) int64
    mlp_proj: Linear
    heads: int
    window: int  # 0: no limit


class KVCache(SlidingKVCache):
    """modelspec.SlidingKVCache on numpy int8 buffers (B, H, capacity, hd)."""

    def reserve(self, B, H, T, hd):
        return self.reserve_with(T, lambda cap: np.empty((B, H, cap, hd), np.int8))


@dataclass
class LaneState:
    """Streaming state of a batch of lanes: global caches, the next patch index, and the
    local model's caches of the current patch (keys and values of its earlier bytes)."""

    caches: list[KVCache]
    patches_done: int = 0
    local_k: np.ndarray | None = None  # (layers, B, H, P, hd) int8
    local_v: np.ndarray | None = None
    local_pos: int = 0  # bytes of the current patch done
    local_caches: list[KVCache] = field(default_factory=list)


class NpMegabyte:
    """The integer coding model on numpy arrays (CPU). Build it with NpMegabyte.load(path)
    or NpMegabyte(config, tensors, ints) from the canonical tensors of an IntMegabyte."""

    device = "cpu"
    numpy_api = True  # coder.numpy_model: use as it is

    def __init__(self, config: MegabyteConfig, tensors: dict[str, np.ndarray], ints: dict):
        self.config = config
        self.tensors = tensors  # canonical storage (what is hashed)
        self.ints = ints
        self._hash: str | None = None
        self._build()

    @classmethod
    def load(cls, path) -> NpMegabyte:
        """Read an integer model written by megazip.export.save_int_model."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(str(path), "np") as f:
            meta = f.metadata()
        config = MegabyteConfig.from_dict(json.loads(meta["config"]))
        return cls(config, load_file(str(path)), json.loads(meta["ints"]))

    @classmethod
    def from_int_model(cls, m) -> NpMegabyte:
        """The same model as an IntMegabyte `m` (its canonical tensors, as numpy arrays)."""
        tensors = {k: v.detach().cpu().contiguous().numpy() for k, v in m.tensors.items()}
        return cls(m.config, tensors, dict(m.ints))

    # -- construction
    def _t(self, name, dtype=np.int64):
        return np.ascontiguousarray(self.tensors[name], dtype=dtype)

    def _linear(self, name):
        w8 = np.ascontiguousarray(self.tensors[f"{name}.w"].astype(np.int8).T)
        w = w8.astype(np.float32)
        vnni = nbk.pack_vnni(w8) if nbk.VNNI and w8.shape[0] <= nbk.VNNI_MAX_K else None
        return Linear(w, self._t(f"{name}.mult"), self.ints[f"{name}.shift"], w8, vnni)

    def _norm(self, name):
        return Norm(self._t(f"{name}.c"), self.ints[f"{name}.eps"])

    def _block(self, name, heads, window):
        i = self.ints
        return Block(
            norm1=self._norm(f"{name}.norm1"),
            qkv=self._linear(f"{name}.attn.qkv"),
            score_mult=i[f"{name}.attn.score_mult"],
            score_shift=i[f"{name}.attn.score_shift"],
            alibi=self._t(f"{name}.attn.alibi"),
            out_mult=self._t(f"{name}.attn.out_mult"),
            out_shift=i[f"{name}.attn.out_shift"],
            proj=self._linear(f"{name}.attn.proj"),
            norm2=self._norm(f"{name}.norm2"),
            fc=self._linear(f"{name}.mlp.fc"),
            gelu=self._t(f"{name}.mlp.gelu"),
            mlp_proj=self._linear(f"{name}.mlp.proj"),
            heads=heads,
            window=window or 0,
        )

    def _build(self):
        c = self.config
        self.attn_exp = self._t("attn_exp")
        self.global_emb = self._t("global_emb")  # (P, 256, D_G)
        self.global_pad = self._t("global_pad")  # (G,)
        self.global_blocks = [
            self._block(f"global.{i}", c.global_heads, c.window) for i in range(c.global_layers)
        ]
        self.global_norm = self._norm("global_norm")
        # per slot p: (P, D_G, L) float32 integers, and (P * L,) multipliers
        w = self.tensors["to_local.w"].astype(np.float32)  # (P, L, D_G)
        self.to_local_w = np.ascontiguousarray(w.transpose(0, 2, 1))
        self.to_local_mult = self._t("to_local.mult").reshape(-1)
        self.local_emb = self._t("local_emb")  # (257, L)
        self.local_blocks = [
            self._block(f"local.{i}", c.local_heads, None) for i in range(c.local_layers)
        ]
        self.local_norm = self._norm("local_norm")
        self.head = self._linear("head")
        self.out_exp = self._t("out_exp")
        self._fused = nbk.pack_local(self)
        self._fused_global = nbk.pack_global(self)

    def __getstate__(self):  # pickled to worker processes: the canonical data only
        return {"config": self.config, "tensors": self.tensors, "ints": self.ints}

    def __setstate__(self, d):
        self.__init__(d["config"], d["tensors"], d["ints"])

    # -- identity
    def content_hash(self) -> str:
        """IntMegabyte.content_hash of the same tensors (the model's identity)."""
        if self._hash is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            h.update(json.dumps(self.ints, sort_keys=True).encode())
            for name in sorted(self.tensors):
                a = np.ascontiguousarray(self.tensors[name])
                h.update(f"{name}|{_TORCH_DTYPE[a.dtype.name]}|{tuple(a.shape)}|".encode())
                h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())
            self._hash = h.hexdigest()
        return self._hash

    # -- the transformer, in integers
    def _attention(self, b: Block, h, cache):
        """h (B, T, D) float32 int8 values -> attention output (B, T, D) float32 int8."""
        B, T, D = h.shape
        H = b.heads
        hd = D // H
        cache = cache if cache is not None else KVCache(0)
        kbuf, vbuf, n = cache.reserve(B, H, T, hd)
        acc = b.qkv(h).reshape(B, T, 3 * D)
        q = np.empty((B, H, T, hd), np.int8)
        nbk._nb_qkv_to_cache(acc, b.qkv.mult, b.qkv.shift, kbuf, vbuf, n, q)
        lo, hi = cache.commit(T)
        if T * (hi - lo) > 1024:  # long blocks: BLAS for the products, numba softmax
            qf = q.astype(np.float32)
            kf = kbuf[:, :, lo:hi].astype(np.float32)
            vf = vbuf[:, :, lo:hi].astype(np.float32)
            scores = qf @ kf.transpose(0, 1, 3, 2)  # (B, H, T, S)
            S = hi - lo
            p = np.empty((B * H, T, S), np.float32)
            nbk._nb_attention(
                scores.reshape(B * H, T, S),
                b.score_mult,
                b.score_shift,
                b.alibi,
                b.window,
                self.attn_exp,
                p,
            )
            y = (p.reshape(B, H, T, S) @ vf).transpose(0, 2, 1, 3).reshape(B * T, D)
            out = np.empty((B * T, D), np.float32)
            nbk._nb_requant(y, b.out_mult, b.out_shift, 127, out)
            return out.reshape(B, T, D)
        out = np.empty((B, T, D), np.float32)
        nbk._nb_attend(
            q,
            kbuf,
            vbuf,
            lo,
            hi,
            b.score_mult,
            b.score_shift,
            b.alibi,
            b.window,
            self.attn_exp,
            b.out_mult,
            b.out_shift,
            out,
        )
        return out

    def _stack(self, blocks: list[Block], x, caches, final: Norm):
        """Residual stream x (B, T, D) int64 through `blocks`, then `final` norm: its
        int8 values (B, T, D) as float32 (IntMegabyte._stack)."""
        B, T, D = x.shape
        x = x.reshape(B * T, D)
        h = np.empty((B * T, D), np.float32)
        nbk._nb_norm(x, blocks[0].norm1.c, blocks[0].norm1.eps, h)
        after = [b.norm1 for b in blocks[1:]] + [final]
        for b, cache, nxt in zip(blocks, caches, after, strict=True):
            y = self._attention(b, h.reshape(B, T, D), cache)
            x, h = _residual_norm(x, b.proj(y), b.proj, b.norm2)
            acc = b.fc(h)
            g = np.empty(acc.shape, np.float32)
            nbk._nb_gelu(acc, b.fc.mult, b.fc.shift, b.gelu, g)
            x, h = _residual_norm(x, b.mlp_proj(g), b.mlp_proj, nxt)
        return h.reshape(B, T, D)

    def new_state(self, batch: int) -> LaneState:
        return LaneState([KVCache(self.config.window - 1) for _ in self.global_blocks])

    def global_context(self, state: LaneState, prev_patches: np.ndarray) -> np.ndarray:
        """IntMegabyte.global_context: prev_patches (B, K, P) -> (B, K, P, L) int64."""
        c = self.config
        B, K, P = prev_patches.shape
        x = self.global_emb[np.arange(P), prev_patches.astype(np.int64)]  # (B, K, P, D_G)
        x = x.reshape(B, K, c.global_dim)
        if state.patches_done == 0:
            x[:, 0] = self.global_pad
        if K == 1 and B <= FUSED_MAX_LANES:  # decoding: all blocks in one compiled call
            h = self._global_step(state, x.reshape(B, c.global_dim)).reshape(B, 1, -1)
        else:
            h = self._stack(self.global_blocks, x, state.caches, self.global_norm)
        state.patches_done += K
        # contiguous first: numpy's matmul of a transposed view takes a loop ~20x slower
        h = np.ascontiguousarray(h.reshape(B * K, P, c.byte_dim).transpose(1, 0, 2))
        acc = np.matmul(h, self.to_local_w)  # (P, B*K, L): slot p uses its own weights
        acc = acc.transpose(1, 0, 2).reshape(B * K, P * c.local_dim)
        out = np.empty(acc.shape, np.int64)
        nbk._nb_requant(acc, self.to_local_mult, self.ints["to_local.shift"], RESIDUAL_LIMIT, out)
        return out.reshape(B, K, P, c.local_dim)

    def _global_step(self, state: LaneState, x: np.ndarray) -> np.ndarray:
        """One patch of the global model, x (B, D) int64 -> its final norm (B, D) float32
        int8 values: nbkernels.global_step_fused over the lanes' KV caches (the same
        integers as _stack)."""
        B, D = x.shape
        H = self.global_blocks[0].heads
        bufs, at = [], []
        for cache in state.caches:
            kbuf, vbuf, n = cache.reserve(B, H, 1, D // H)
            bufs.append((kbuf, vbuf))
            at.append((n, *cache.commit(1)))
        ns, los, his = (np.array(v, np.int64) for v in zip(*at, strict=True))
        h = np.empty((B, D), np.float32)
        g = self._fused_global
        nbk.global_step_fused(
            np.ascontiguousarray(x, dtype=np.int64),
            tuple(k for k, _ in bufs),
            tuple(v for _, v in bufs),
            ns,
            los,
            his,
            self.global_blocks[0].window,
            g.w,
            g.i64,
            g.layout,
            g.vw,
            g.vc,
            self.attn_exp,
            h,
        )
        return h

    def _counts(self, h):
        acc = self.head(h)
        out = np.empty((acc.shape[0], 256), np.int64)
        nbk._nb_counts(acc, self.head.mult, self.head.shift, self.out_exp, COUNT_TOTAL, out)
        return out

    def local_counts(self, patches: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Whole patches: patches (B, K, P) bytes, context (B, K, P, L) -> (B, K, P, 256)."""
        B, K, P = patches.shape
        prev = np.empty((B, K, P), np.int64)
        prev[..., 0] = PAD_BYTE
        prev[..., 1:] = patches[..., :-1]
        x = (self.local_emb[prev] + context).reshape(B * K, P, -1)
        h = self._stack(self.local_blocks, x, [None] * len(self.local_blocks), self.local_norm)
        return self._counts(h).reshape(B, K, P, 256)

    def begin_patch(self, state: LaneState):
        """Before the first byte of a patch (byte-by-byte mode): the local caches restart."""
        state.local_pos = 0

    def local_step(self, state: LaneState, prev_byte: np.ndarray, context: np.ndarray):
        """One byte for every lane: prev_byte (B,) (PAD_BYTE at a patch start), context
        (B, L) int64 -> counts (B, 256) int64. Up to FUSED_MAX_LANES lanes the whole local
        model runs as one compiled call (nbkernels.local_step_fused); with more, layer by
        layer with BLAS GEMMs over all lanes (faster there). The same integers."""
        B = context.shape[0]
        if B > FUSED_MAX_LANES:
            return self._local_step_layered(state, prev_byte, context)
        shape = (len(self.local_blocks), B) + self._fused.kv_tail
        if state.local_k is None or state.local_k.shape != shape:
            state.local_k = np.zeros(shape, np.int8)
            state.local_v = np.zeros(shape, np.int8)
        out = np.empty((B, 256), np.int64)
        f = self._fused
        nbk.local_step_fused(
            np.ascontiguousarray(prev_byte, dtype=np.int64),
            np.ascontiguousarray(context, dtype=np.int64),
            state.local_pos,
            state.local_k,
            state.local_v,
            f.w,
            f.i64,
            f.layout,
            f.vw,
            f.vc,
            self.attn_exp,
            self.out_exp,
            out,
        )
        state.local_pos += 1
        return out

    def _local_step_layered(self, state, prev_byte, context):
        """local_step through _stack: BLAS GEMMs over all lanes, layer by layer."""
        x = (self.local_emb[np.asarray(prev_byte, np.int64)] + context)[:, None]
        if state.local_pos == 0:
            state.local_caches = [KVCache(self.config.patch_size) for _ in self.local_blocks]
        h = self._stack(self.local_blocks, x, state.local_caches, self.local_norm)
        state.local_pos += 1
        return self._counts(h[:, 0])

    def count_tables(self, lanes: np.ndarray, chunk_patches: int = 64):
        """IntMegabyte.count_tables: lanes (B, T) bytes, T a multiple of P; yields (start
        byte, counts (B, C*P, 256) int64) chunk by chunk."""
        P = self.config.patch_size
        B, T = lanes.shape
        patches = np.asarray(lanes, np.int64).reshape(B, T // P, P)
        state = self.new_state(B)
        for s in range(0, T // P, chunk_patches):
            chunk = patches[:, s : s + chunk_patches]
            if s:
                prev = patches[:, s - 1 : s - 1 + chunk.shape[1]]
            else:
                prev = np.concatenate([chunk[:, :1], chunk[:, :-1]], 1)
            ctx = self.global_context(state, prev)
            yield s * P, self.local_counts(chunk, ctx).reshape(B, -1, 256)

    def counts_incremental(self, lanes: np.ndarray) -> np.ndarray:
        """The same tables byte by byte, as a decoder computes them: (B, T, 256) int64."""
        P = self.config.patch_size
        B, T = lanes.shape
        lanes = np.asarray(lanes, np.int64)
        state = self.new_state(B)
        out = []
        for k in range(T // P):
            prev = lanes[:, (k - 1) * P : k * P] if k else lanes[:, :P]
            ctx = self.global_context(state, prev.reshape(B, 1, P))[:, 0]
            self.begin_patch(state)
            prev_byte = np.full((B,), PAD_BYTE, np.int64)
            for j in range(P):
                out.append(self.local_step(state, prev_byte, ctx[:, j]))
                prev_byte = lanes[:, k * P + j]
        return np.stack(out, 1)


def _residual_norm(x, acc, lin: Linear, norm: Norm):
    xo = np.empty(x.shape, np.int64)
    ho = np.empty(x.shape, np.float32)
    nbk._nb_residual_norm(x, acc, lin.mult, lin.shift, RESIDUAL_LIMIT, norm.c, norm.eps, xo, ho)
    return xo, ho


MIN_GROUP_LANES = 8  # LaneGroups: at least this many lanes per thread


class LaneGroups:
    """NpMegabyte's decoding interface (new_state, global_context, begin_patch,
    local_step) with the lanes split into contiguous groups, each computed by its own
    thread (the numba kernels and BLAS release the GIL): lanes are independent in the
    model, so the tables are the same integers as one call over all lanes. Use as a
    context manager (the threads stop on exit)."""

    def __init__(self, model: NpMegabyte, lanes: int, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.m, self.config = model, model.config
        g = max(1, min(threads, lanes // MIN_GROUP_LANES))
        cuts = [lanes * i // g for i in range(g + 1)]
        self.groups = list(zip(cuts[:-1], cuts[1:], strict=True))
        self.pool = ThreadPoolExecutor(len(self.groups) - 1) if len(self.groups) > 1 else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown()
        return False

    def _run(self, fn, states, *arrays):
        """fn(state_i, *(a[lo:hi] for a in arrays)) for every group (the first one on
        this thread), results concatenated along the lanes."""
        parts = [tuple(a[lo:hi] for a in arrays) for lo, hi in self.groups]
        if self.pool is None:
            return fn(states[0], *parts[0])
        futures = [self.pool.submit(fn, s, *p) for s, p in zip(states[1:], parts[1:], strict=True)]
        first = fn(states[0], *parts[0])
        return np.concatenate([first] + [f.result() for f in futures], 0)

    def new_state(self, batch: int) -> list[LaneState]:
        return [self.m.new_state(hi - lo) for lo, hi in self.groups]

    def global_context(self, states, prev_patches):
        return self._run(self.m.global_context, states, prev_patches)

    def begin_patch(self, states):
        for s in states:
            self.m.begin_patch(s)

    def local_step(self, states, prev_byte, context):
        return self._run(self.m.local_step, states, prev_byte, context)
