"""The adaptive stage: each lane teaches the coder as it goes (integer state, CPU).

A prior cannot know a file's own repeats. This stage keeps, per lane, a *match model*:
a hash of the last MIN_MATCH bytes points to where that context last occurred in the
lane; while the bytes keep agreeing, the byte that followed the earlier occurrence is
the predicted byte e, with a verified match length. How much to trust e is learned
online, in a table of 16-bit probabilities indexed by (match length bucket, bucket of
the prior's own probability of e), adaptive probability map style. The final table sets
p(e) to that learned probability and scales every other count of the prior to fill the
rest, so a confident prior and a confident match agree and an unreliable match costs
little. Without a match the prior passes through unchanged.

Everything is integer arithmetic on per-lane state, updated after every byte exactly as
the decoder will: the encoder's and decoder's tables are identical by construction. The
stage always runs on the CPU (numba), so it is the same whichever device computed the
prior. Format version: ADAPTIVE_VERSION, recorded in .mgz headers.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .intmodel import COUNT_BITS, COUNT_TOTAL

ADAPTIVE_VERSION = 1
MIN_MATCH = 6  # bytes hashed to find a match
HASH_BITS = 16  # at most 2^16 hash table entries per lane (fewer for short lanes)
MAX_LEN = 24  # match lengths are bucketed 0..MAX_LEN
PROB_BITS = 16  # learned probabilities in 1/2^16
RATE = 7  # table update: p += (target - p) >> min(count + 1, RATE)
TRUST = 16  # observations before a table entry fully replaces the prior's p(e)
MIN_COUNT_E = 256  # the predicted byte keeps at least this count

_jit = nb.njit(cache=True, nogil=True)


class LaneModels:
    """Adaptive state of B lanes of up to `capacity` bytes each (numpy arrays)."""

    def __init__(self, lanes: int, capacity: int):
        self.hist = np.zeros((lanes, max(capacity, 1)), np.uint8)  # each lane's bytes so far
        self.length = np.zeros(lanes, np.int64)
        bits = min(HASH_BITS, max(10, int(capacity).bit_length()))  # memory ~ lane length
        self.table = np.zeros((lanes, 1 << bits), np.int32)  # end of context, or 0
        self.ptr = np.zeros(lanes, np.int64)  # position of the predicted byte, or -1
        self.ptr -= 1
        self.mlen = np.zeros(lanes, np.int64)
        # (length bucket, log2 of the prior's count of e) -> [p(e is right) in 1/2^16,
        # observations]; an entry is blended with the prior's own p(e) until it has seen
        # TRUST outcomes, so an untrained entry changes nothing
        self.apm = np.zeros((lanes, MAX_LEN + 1, COUNT_BITS + 1, 2), np.int64)
        self.pending = np.zeros((lanes, 3), np.int64)  # e, length bucket, prior bucket; e<0: none

    def arrays(self):
        return self.hist, self.length, self.table, self.ptr, self.mlen, self.apm, self.pending


@_jit
def _ilog2(x):
    n = 0
    while x > 1:
        x >>= 1
        n += 1
    return n


@_jit
def _mix_one(counts, b, out, hist, length, table, ptr, mlen, apm, pending):
    """Final counts of lane b for its next byte into out (256,), from prior counts (256,)."""
    pending[b, 0] = -1
    if ptr[b] < 0:
        out[:] = counts
        return
    e = np.int64(hist[b, ptr[b]])
    lb = min(mlen[b], MAX_LEN)
    qb = _ilog2(counts[e])
    n = min(apm[b, lb, qb, 1], TRUST)
    learned = apm[b, lb, qb, 0] << (COUNT_BITS - PROB_BITS)
    blended = (counts[e] * (TRUST - n) + learned * n) // TRUST
    target = max(MIN_COUNT_E, min(COUNT_TOTAL - 256, blended))
    rest_old = COUNT_TOTAL - counts[e]
    rest_new = COUNT_TOTAL - target
    used = np.int64(0)
    for s in range(256):
        if s != e:
            c = max(np.int64(1), (counts[s] * rest_new) // rest_old)
            out[s] = c
            used += c
    out[e] = COUNT_TOTAL - used
    pending[b, 0] = e
    pending[b, 1] = lb
    pending[b, 2] = qb


@_jit
def _hash(hist, b, end):
    """Hash of the MIN_MATCH bytes before position `end` of lane b."""
    h = np.uint64(0)
    for i in range(end - MIN_MATCH, end):
        h = (h << np.uint64(8)) | np.uint64(hist[b, i])
    h = h * np.uint64(0x9E3779B97F4A7C15)
    return np.int64(h >> np.uint64(64 - HASH_BITS))  # callers mask to their table size


@_jit
def _update_one(sym, b, hist, length, table, ptr, mlen, apm, pending):
    """Learn from lane b's actual next byte `sym` and advance its match state."""
    e = pending[b, 0]
    if e >= 0:
        lb, qb = pending[b, 1], pending[b, 2]
        target = np.int64((1 << PROB_BITS) - 1) if sym == e else np.int64(0)
        n = apm[b, lb, qb, 1]
        apm[b, lb, qb, 0] += (target - apm[b, lb, qb, 0]) >> min(n + 1, RATE)
        apm[b, lb, qb, 1] = min(n + 1, 1 << 20)
    t = length[b]
    hist[b, t] = sym
    length[b] = t + 1
    if ptr[b] >= 0 and hist[b, ptr[b]] == sym:
        ptr[b] += 1
        mlen[b] += 1
    else:
        ptr[b] = -1
        mlen[b] = 0
    n = t + 1
    if n >= MIN_MATCH:
        h = _hash(hist, b, n) & (table.shape[1] - 1)
        if ptr[b] < 0:
            cand = np.int64(table[b, h])  # where this context ended before (0: never)
            if cand > 0:
                k = 0  # verify: how many bytes before both positions agree
                while (
                    k < MAX_LEN
                    and cand - 1 - k >= 0
                    and hist[b, cand - 1 - k] == hist[b, n - 1 - k]
                ):
                    k += 1
                if k >= MIN_MATCH:
                    ptr[b] = cand
                    mlen[b] = k
        table[b, h] = n


@_jit
def _mix_step(counts, active, out, hist, length, table, ptr, mlen, apm, pending):
    for b in range(counts.shape[0]):
        if active[b]:
            _mix_one(counts[b], b, out[b], hist, length, table, ptr, mlen, apm, pending)


@_jit
def _update_step(symbols, active, hist, length, table, ptr, mlen, apm, pending):
    for b in range(symbols.shape[0]):
        if active[b]:
            _update_one(symbols[b], b, hist, length, table, ptr, mlen, apm, pending)


@_jit
def _encode_chunk(counts, symbols, active, out, hist, length, table, ptr, mlen, apm, pending):
    B, C = symbols.shape
    for b in range(B):
        for c in range(C):
            if active[b, c]:
                _mix_one(counts[b, c], b, out[b, c], hist, length, table, ptr, mlen, apm, pending)
                _update_one(symbols[b, c], b, hist, length, table, ptr, mlen, apm, pending)


def mix(models: LaneModels, counts: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Decoder side: final counts (B, 256) int64 for the next byte of every active lane
    (inactive lanes keep the prior's rows). Call update() with the decoded bytes next."""
    out = counts.copy()
    _mix_step(counts, active, out, *models.arrays())
    return out


def update(models: LaneModels, symbols: np.ndarray, active: np.ndarray) -> None:
    """Decoder side: feed the bytes just decoded (B,) for the active lanes."""
    _update_step(symbols, active, *models.arrays())


def mix_chunk(models: LaneModels, counts: np.ndarray, symbols: np.ndarray, active: np.ndarray):
    """Encoder side: final counts (B, C, 256) for a chunk of C positions whose bytes are
    known (B, C), mixing and learning position by position exactly as the decoder
    (inactive positions keep the prior's rows)."""
    out = counts.copy()
    _encode_chunk(counts, symbols, active, out, *models.arrays())
    return out
