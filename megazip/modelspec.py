"""What the coding path needs to know about the model, without torch: the MEGABYTE
config, the pad byte, and the fixed constants of the integer coding model (count tables,
GEMM blocking, fixed-point units). megazip/model.py (training, torch) and
megazip/intmodel.py re-export them; the torch-free CPU coding path (megazip/npmodel.py,
megazip/nbkernels.py, megazip/adaptive.py, megazip/coder.py) imports them from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# the adaptive stage's format version (megazip/adaptive.py; here so that reading a header
# needs no numba)
ADAPTIVE_VERSION = 11

# ---- the integer coding model's fixed constants (megazip/intmodel.py documents them)
COUNT_BITS = 24
COUNT_TOTAL = 1 << COUNT_BITS  # every count table sums to this
GEMM_BLOCK = 1024  # largest K per float32 GEMM: 127 * 127 * 1024 < 2^24
ATTN_UNIT = 32  # attention logits in 1/32 nat
OUT_UNIT = 64  # output logits in 1/64 nat
OUT_EXP_BITS = 30
RESIDUAL_LIMIT = 1 << 26  # residual streams are clamped to +-this (sums of squares fit int64)
PROB_BITS = 15  # attention probabilities sum to ~2^15
MASKED = -(1 << 40)

PAD_BYTE = 256  # index of the learned "previous byte" embedding at the start of each patch


class SlidingKVCache:
    """Keys/values (B, H, S, hd) of one attention layer in buffers with room to spare,
    for any array library. reserve_with(T, alloc) returns the buffers and the position n
    where the next T entries go (`alloc(capacity)` makes one new buffer (B, H, capacity,
    hd), called only when the buffers are full: the last `keep` positions are then
    compacted to the front, so a step costs no full copy); commit(T) then returns the
    range [lo, hi) of positions that holds the last `keep` earlier positions followed by
    the new ones."""

    def __init__(self, keep: int):
        self.keep = keep
        self.k = self.v = None  # buffers (B, H, capacity, hd)
        self.n = 0  # filled positions

    def reserve_with(self, T: int, alloc):
        if self.k is None or self.n + T > self.k.shape[2]:
            m = min(self.n, self.keep)  # what is still visible
            cap = 2 * self.keep + T
            bk, bv = alloc(cap), alloc(cap)
            if m:
                bk[:, :, :m] = self.k[:, :, self.n - m : self.n]
                bv[:, :, :m] = self.v[:, :, self.n - m : self.n]
            self.k, self.v, self.n = bk, bv, m
        return self.k, self.v, self.n

    def commit(self, T: int):
        self.n += T
        return max(0, self.n - T - self.keep), self.n


@dataclass
class MegabyteConfig:
    patch_size: int = 8  # P bytes per patch
    global_dim: int = 256  # G, width of the global model; must be a multiple of P
    global_layers: int = 4
    global_heads: int = 4
    local_dim: int = 128  # L
    local_layers: int = 2
    local_heads: int = 4
    window: int = 128  # W, patches of global context (including the current one)
    mlp_ratio: int = 4

    def __post_init__(self):
        assert self.global_dim % self.patch_size == 0, "global_dim must be a multiple of P"
        assert self.global_dim % self.global_heads == 0
        assert self.local_dim % self.local_heads == 0
        assert self.window >= 1

    @property
    def byte_dim(self) -> int:
        """D_G: width of one byte's slice of the global model."""
        return self.global_dim // self.patch_size

    @property
    def context_bytes(self) -> int:
        return self.window * self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MegabyteConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
