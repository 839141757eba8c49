"""The adaptive stage (version 11): context mixing on top of the model, shared by a block.

A prior cannot know a file's own statistics. This stage learns them online, in integer
arithmetic, and mixes them with the prior, paq/lpaq style, on a *binary decomposition*
of each byte: the byte is the path of 8 binary decisions (most significant bit first)
through a tree of 255 nodes, node n in 1..255 (children 2n for bit 0 and 2n + 1 for bit
1, leaves 256 + byte). Each decision is coded on its own (the arithmetic coder codes bits):
for the node on the byte's path the stage computes p(bit = 1) from these models, each
an input of the mixers (a counter is a 16-bit probability with a hit count, learning at
rate 1 / (n + 1.5)):

- the prior: the node's share of the prior's 256 counts (the prior is exact in this
  decomposition: without other inputs the stage reproduces it), and the same through the
  prior's map (an APM per node, in a lane without a record length averaged with one per
  (last byte, node), learning what the prior's probabilities are worth in this block:
  version 11, -0.04 to -0.1 % on texts and code);
- order-1 counters (a direct table) and hashed contexts of orders 2, 3, 4, 5, 6, 8, 12, a word
  context (the letters since the last non-letter, case folded; in a record lane whose
  recent bytes are mostly not text, a sparse context of the 3 bytes before the last
  instead: version 10, executables -0.7 %) and two record contexts
  or, without a record length, two word contexts (the word before the last with the
  current one, and the last three words: version 8, in place of sparse byte contexts,
  -0.2 to -0.6 % on long texts), each a counter per (context, node) in buckets of 16 per
  (context, high nibble) with a check word, in a table per kind (version 11: without a
  record length orders 2-4 get fewer buckets and the word trigram and bigram more, in
  the same memory: -0.14 % on a 430 KB text); a lane without a record length adds the word
  bigram (the previous word with the current one) and a text column context (the byte at
  the same column of the previous line, with the last byte; none before a second line),
  a lane with one order 0, the byte above with its right neighbour and an indirect
  context (version 11: the last two bytes with the two that last followed them; tables
  -0.5 to -1 %, kennedy.xls -0.5 %) (version 7: a
  context's bucket is looked up in 4 neighbouring places, and a new one replaces the one
  whose first counter has the fewest hits: -0.6 % on long texts and -4 % on kennedy.xls
  alone, where one place per bucket lost the contexts that mattered to those seen once);
  each hashed counter (of the orders and the word context: with fewer than 61 hits)
  reaches the mixers through a counter map of its kind (an APM over the counter's
  probability, one per bucket of its hit count, learning what such counters turn out to
  be worth), as the mean of the counter's and the map's stretch;
- a match model: the byte that followed the last occurrence of the last MIN_MATCH bytes
  (in any lane of the block), predicted with a learned confidence per match length; a
  match that was right for RECOVER_LEN bytes in a row outlives a wrong byte (version 9:
  it is *recovered*, its length restarts at 0 and its confidence is learned apart, by
  the times it was recovered: kennedy.xls -11 %, executables -1 %);
- a run model: per hashed order's context, the byte that last followed it and how many
  times in a row; the longest order that has one predicts it, with a learned confidence
  per (order, run length) (version 7: -0.1 % on texts, -1.4 % on kennedy.xls alone);
- with a record length r (fixed-width records, image rows): bit-level 2-D contexts for
  1-bit-per-pixel bitmaps (the pixels to the left, and above, in windows of one to three
  rows; three neighbourhood sizes, direct or hashed counter tables; in a *raster* lane, a
  binary one with rows of RASTER_MIN bytes or more, the smallest one's counters learn at
  a fixed fast rate, as pixel statistics drift along an image, and the mixers and APMs
  below that a byte lane selects by bytes, nodes and depths go by pixel contexts alone:
  version 11, 1-bit images -3.5 to -10 %), and two column
  predictions (the byte above; the byte above plus its difference to the one above it),
  each a counter by (column, whether it held for the previous byte, depth, predicted
  bit). The encoder chooses r for the whole block from all its bytes (choose_record) and
  signals it in the stream, so every lane uses it from its first byte (with r = 0 no
  lane has one: version 5's detector of a lane's own record length from recurring byte
  distances was dropped, as it only ever cost text files, up to 0.4 %);

mixed in the logistic ("stretch") domain by five single-layer networks with integer
weights learned online (each input's weight starting at 1/8, the prior's at 5/8 and
order 1's at 1/32: version 10, -0.2 % on texts, -1 % on files of a few KB), one with
weight sets selected by (node, match state, record), the second by (confirmed orders,
depth, match state, record, class of the last byte or which column predictions held),
the third by (last byte, depth), the fourth by (byte before the last, depth), and with a
record length a fifth by (the node's 12-bit pixel context: the bits to its left, above
and two rows up; depth) (version 8: kennedy.xls -2 %), without one by (a 12-bit hash of
the current word and the last byte; depth) (version 10: -0.2 % on texts), combined by a
final mixer per node; then refined by adaptive probability maps (APM/SSE) selected by
(node, match state: whether the match predicts this node, its length bucket and expected
bit), by (node, previous byte), by a hash of (node, previous two bytes) and, with a
record length, by (node, byte above) and by (pixel context, depth), without one by
hashes of (node, previous three bytes) and (node, previous four bytes) (version 9: -0.1
to -0.2 % on texts). In a raster lane (version 11) the third and fourth mixers go by
hashes of the second and third pixel contexts instead, the fifth and its APM by the
pixel context alone (no depth), one final mixer serves every node, and the APMs of the
previous byte, the byte above and the previous two bytes are keyed by hashes of pixel
contexts (the first two wide ones, the second one): in an image the byte boundaries and
a pixel's place in its byte mean nothing.
The result, p(bit = 1) in 1/65536 (1..65535), codes the decision; only the 8 nodes of
the byte's path are ever computed (version 5 computed all 255 to give the coder a table
of 256 counts, most of them for bytes that did not come). A node reached with less than
LAZY_MASS of the 2^24 probability mass (the product of the path's probabilities so far:
a surprise) is mixed like any other, but nothing learns from it: mixers trained on such
nodes lost 4.5 % on a spreadsheet.

State is shared by all lanes of a block (one range-coder stream): all active lanes are
predicted at step t from the state after step t - 1 (begin, then the path's nodes one
by one as the bits become known), then the state learns from every lane's byte t in lane
order. Each lane keeps only its own bytes, context hashes and match
pointer. Encoder and decoder run the same integer code in the same order (mix_chunk is
begin, predict and update, position by position), so their tables are identical by construction.
Lookup tables (stretch/squash) are defined by correctly rounded decimal arithmetic
(squash_exact); at import they are computed in float64 and kept only if they match the
definition's fixed digest, else recomputed by the definition: identical on every machine.

In a lane with a record length, a hashed counter that was confidently wrong drops its hit
count (FORGET_COUNT) and so adapts fast again (version 7; on texts it cost 0.1-0.3 %).

The stage also codes a segment alone (encode_stage, decode_stage: one lane, a flat
prior, its own binary arithmetic coder), for data the model adds little to. Since
version 8 the same coder codes the decisions of a model block (PathEncoder,
PathDecoder: a decoder decodes the byte of every lane in one compiled call, instead of
a call to the stage and to constriction's range coder per decision; streams are also a
few bytes smaller).

Format version: ADAPTIVE_VERSION (megazip/modelspec.py), recorded in .mgz headers;
docs/FORMAT.md describes it.
"""

from __future__ import annotations

import ctypes
import decimal
import hashlib
import sys

import numba as nb
import numpy as np

from .modelspec import (
    ADAPTIVE_VERSION,  # noqa: F401 - this stage's version, kept there
    COUNT_TOTAL,
)

# ---- fixed-point conventions -------------------------------------------------------
# probabilities: 16 bits (1..65535 of 65536); stretch domain: ln(p / (1 - p)) in 1/256,
# clamped to [-SMAX, SMAX]
SMAX = 3071
ORDERS = (2, 3, 4, 5, 6, 8, 12)  # hashed byte contexts (order 1 is a direct table; 5 and 12
# since version 10: -0.14 % on texts and code, -3 % on kennedy.xls, -1 % on a CSV table)
# plus the word context, two record (or sparse) contexts; then, in a lane without a
# record length, the word bigram and the text column (K_TEXT contexts in all), and in a
# lane with one, order 0, the byte above with its right neighbour and the last, and
# (version 11) the indirect context (K_REC)
N_HASHED = len(ORDERS) + 6
K_TEXT = N_HASHED - 1
K_REC = N_HASHED
H_INDIRECT = N_HASHED - 1  # records: the last two bytes with the two that last followed them
H_WORD = len(ORDERS)
H_BIGRAM = len(ORDERS) + 3
H_COLUMN = H_BIGRAM + 1  # text: the byte above in the previous line, with the last (hash 0: none)
N_BITMAP = 3  # bit-level 2-D contexts of a lane with a record length, in one table:
BM_OFF = (0, 1 << 12, (1 << 12) + (1 << 20))  # 12 and 20 bits direct, then one hashed to
BITMAP_BITS = 22  # at most this many bits (fewer for small blocks)
N_COLPRED = 2  # expected bytes of a record lane: the byte above; above + (above - 2 up)
N_WIDE = 3  # wider bit-level 2-D contexts of a record lane, hashed into the bitmap table's
# last part, which only mixers 1 and 5 read (version 10: 1-bit images -1 to -6 %; read by
# all five mixers they cost other record files 0.1-0.3 %)
COL_CAP = 1023  # columns beyond this share one context
# mixer inputs: bias, prior, order 1, match, run, the prior through its map (version 11),
# hashed contexts, then those of record lanes only: bitmap contexts, column predictions,
# wide bitmap contexts. A lane without a record length mixes the first N_IN_TEXT (its
# other inputs would be 0), a lane with one all N_IN in mixers 1 and 5 and the first
# IN_WIDE in the others.
IN_BIAS, IN_PRIOR, IN_O1, IN_MATCH, IN_RUN, IN_PMAP, IN_H0 = 0, 1, 2, 3, 4, 5, 6
IN_BM = IN_H0 + N_HASHED
IN_CP = IN_BM + N_BITMAP
IN_WIDE = IN_CP + N_COLPRED
N_IN = IN_WIDE + N_WIDE
N_IN_TEXT = IN_H0 + K_TEXT
# second mixer's weight sets: (confirmed orders, depth, match, record, class of the last byte
# or, in a record lane, which column predictions held for it)
N_SEL2 = (len(ORDERS) + 1) * 8 * 3 * 2 * 4
N_SEL3 = 256 * 8  # the third mixer's weight sets (last byte, depth), after the second's in w2
N_SEL4 = 256 * 8  # the fourth's: (byte t - 2, depth), after the third's
N_MIX = 5
# the fifth's: (pixel context or, in a text lane, word hash; depth), after the fourth's
N_SEL5 = 4096 * 8
MATCH_INIT = 1 << 16  # mixers 3, 4 and 5: the initial weight of the match input
INPUT_INIT = 1 << 13  # every mixer: the initial weight of the inputs after the prior (version
# 10; 0 before: -0.1 % on texts, -1 % on files of a few KB, whose weights never settle) but
PRIOR_INIT = 40960  # ... the prior's, 5/8 (1 before) and
O1_INIT = 2048  # ... order 1's, 1/32 (about what they settle to on texts: -0.08 % more)
RUN_BITS_EXTRA = 2  # the run model's slots: 4 per bucket of a hashed context kind
RUN_MAX = 15  # run lengths the run model's confidence tells apart
WAYS = 4  # a context's bucket may sit in any of 4 neighbouring places (set-associative)
MIN_MATCH = 6  # bytes hashed to find a match
RECOVER_LEN = 8  # a match right this many bytes in a row survives a wrong byte (version 9)
N_RECOVERED = 4  # the match confidence per (length, times recovered up to 3)
MAX_LEN = 32  # match lengths are counted up to this
N_MSTATE = 6  # mixer weight sets per node: (no match on this node, short, long) x record
LONG_MATCH = 16
MIX_SHIFT = 16  # weights: 1.0 = 2^16
FINAL_INIT = (19661, 19661, 13107, 13107, 0)  # the final mixer's initial weights
FINAL_SHIFT = 14  # the final mixer's learning rate (as LR_SHIFT; 13: kennedy.xls +5 %)
LR_SHIFT = 12  # mixer learning rate: dw = x * err * LR_DECAY[n] >> (16 + LR_SHIFT)
LR_HALF = 256  # the rate of a weight set falls as 1 / (1 + n / LR_HALF) after n updates
LR_FLOOR = 16  # ... down to 1 / LR_FLOOR
COUNTER_LIMIT = 255  # adaptive counters: rate 1 / (n + 1.5), n capped here
FORGET_COUNT = 4  # a record lane's hashed counter that was confidently wrong restarts here
BITMAP_LIMIT = 255  # ... in the bitmap contexts, but
RASTER_LIMIT = 3  # ... the small pixel context's in a raster lane (version 11), a binary
RASTER_MIN = 64  # lane (text score below TEXT_BINARY) with records of at least RASTER_MIN
# bytes, where pixel statistics drift along the image; there mixers 3, 4 and 5, the final
# mixer and the APMs a2..a5 are selected by pixel contexts alone (1-bit images -3.5 to -10 %)
APM_SHIFT = 8
APM_STEP = 1 << APM_SHIFT
APM_KNOTS = 2 * 3072 // APM_STEP + 1  # 25 knots over the stretch range
APM_LIMIT = 127
APM4_BITS = 16  # the order-2 APM: (last two bytes, node) hashed to this many bits
APM4_ROWS = 1 << APM4_BITS  # ... as are the order-3 and order-4 APMs (text lanes)
APM_INIT = 8  # initial observation count of an APM knot (its first rates: 1 / 9.5 ...)
KNOT_SHIFT = 8  # an APM or counter-map knot: (probability, 20 bits) << 8 | count, a u32
KNOT_COUNT = (1 << KNOT_SHIFT) - 1
LAZY_MASS = 4096  # nodes reached with less of the 2^24 mass (surprises) teach nothing
MAX_BUCKET_BITS = 18  # per hashed context kind: at most about 2^18 buckets of 16 entries,
KIND_BITS = (-2, -2, -1, 0, 0, 0, 0, 0, 0, 1, 1, 0, -8)  # ... in a block without a record
# length kind k 2^(bits + KIND_BITS[k]) (version 11: orders 2-4 need fewer, the word
# trigram and bigram more, in the same memory: -0.14 % on a 430 KB text; records keep
# 2^bits for every kind, their orders 2-4 matter more)
assert len(KIND_BITS) == N_HASHED
MIN_BUCKET_BITS = 10
MATCH_BITS_MAX = 22
ORDER0_HASH = 7146604135283800957  # the order-0 context of record lanes
TEXT_FULL = 4096  # a lane's text score: s - s / 64 + (64 if a byte is text: BYTE_CLASS < 3)
TEXT_BINARY = 3072  # ... below this (about 3/4 of the last ~64 bytes text) a record lane's
# word context is a sparse one, of the 3 bytes before the last (version 10: executables
# -0.7 %, kennedy.xls -0.4 %)
MAX_RECORD = 2048  # longest record length the encoder looks for
RECORD_LIMIT = 65535  # longest record length a stream may signal
RECORD_WORK = 1 << 26  # the encoder's record search compares at most this many byte pairs
# params[1] bits (ablation only): models switched off
OFF_BITMAP, OFF_COLPRED, OFF_MIXER2, OFF_APM2, OFF_BIGRAM, OFF_SMAP = 1, 2, 4, 8, 16, 32
OFF_COLUMN = 64  # the text column context
OFF_RUN, OFF_FORGET = 128, 256  # the run model; record lanes' forgetting counters
OFF_WAYS = 512  # one place per bucket instead of WAYS
OFF_PIXEL = 1024  # record lanes' 5th mixer and APM, selected by a pixel context
OFF_WORDS = 2048  # text lanes' skip-bigram and trigram word contexts
OFF_RECOVER = 4096  # the match model's recovery (a match ends at its first wrong byte)
OFF_APM34 = 8192  # text lanes' order-3 and order-4 APMs (version 8's final average)
OFF_SPARSE = 16384  # binary record lanes' sparse context (the word context instead)
OFF_INIT = 32768  # mixer weights start as in version 9 (prior 1, the others 0)
OFF_WIDE = 65536  # record lanes' wide bitmap contexts
OFF_WORDMIX = 131072  # text lanes' 5th mixer, selected by the current word
OFF_RASTER = 262144  # raster lanes (as other record lanes: BITMAP_LIMIT, byte selectors)
OFF_KINDS = 524288  # every hashed context kind 2^bits buckets (version 10's sizes)
OFF_PMAP = 1 << 20  # the prior's map (its input 0)
OFF_INDIRECT = 1 << 21  # record lanes' indirect context
# counter maps: per hashed context kind, an APM-like map from (the counter's hit count,
# bucketed, and its probability) to the probability such counters have shown; the mixer
# sees the mean of the counter's and the map's stretch
SM_BUCKETS = 12
SM_LIMIT = 255  # a map knot's rate: 1 / (n + 1.5), n from SM_INIT capped here
SM_INIT = 8
SM_MAXCB = 10  # order-2..6 and word counters from this bucket on (61+ hits) bypass the map

_jit = nb.njit(cache=True, nogil=True)
_inline = nb.njit(cache=True, nogil=True, inline="always")  # no call (nor reference counts
# of its ~25 array arguments) per use: for the per-node and per-byte kernels


def squash_exact() -> np.ndarray:
    """SQUASH by definition: for x = i / 256, i in -3072..3072, 65536 / (1 + e^-x) rounded
    half-even to an integer and clamped to 1..65535, in 40-digit decimal arithmetic
    (correctly rounded exp: the same on every machine; about 0.1 s)."""
    ctx = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)
    squash = np.zeros(2 * 3072 + 1, np.int64)
    one = decimal.Decimal(1)
    for i in range(-3072, 3073):
        x = ctx.divide(decimal.Decimal(i), decimal.Decimal(256))
        p = ctx.divide(one, ctx.add(one, ctx.exp(-x)))
        v = int(ctx.multiply(p, decimal.Decimal(65536)).to_integral_value(decimal.ROUND_HALF_EVEN))
        squash[i + 3072] = min(65535, max(1, v))
    return squash


def squash_fast() -> np.ndarray:
    """SQUASH in float64 (a millisecond). It equals squash_exact wherever no value lies
    within float64's error of a rounding tie; the digest check below decides."""
    x = np.arange(-3072, 3073) / 256.0
    return np.clip(np.rint(65536.0 / (1.0 + np.exp(-x))), 1, 65535).astype(np.int64)


def stretch_of(squash: np.ndarray) -> np.ndarray:
    """STRETCH[p], p in 0..65535: the largest x in -3072..3072 with squash[x + 3072] <= p
    (-3072 if none), clamped to +-SMAX (squash is nondecreasing)."""
    x = np.searchsorted(squash[1:], np.arange(65536), side="right") - 3072
    return np.clip(x, -SMAX, SMAX).astype(np.int64)


def table_digest(squash: np.ndarray, stretch: np.ndarray) -> str:
    """sha256 of squash and stretch as little-endian int64 (the first 16 hex digits)."""
    raw = squash.astype("<i8").tobytes() + stretch.astype("<i8").tobytes()
    return hashlib.sha256(raw).hexdigest()[:16]


TABLE_DIGEST = "0928e75eb58a51e0"  # the tables must be the same on every machine
SQUASH = squash_fast()
STRETCH = stretch_of(SQUASH)
if table_digest(SQUASH, STRETCH) != TABLE_DIGEST:  # this machine's float exp: recompute
    SQUASH = squash_exact()
    STRETCH = stretch_of(SQUASH)
    if table_digest(SQUASH, STRETCH) != TABLE_DIGEST:
        raise RuntimeError("megazip.adaptive: lookup tables differ from the reference")
# kept in the narrowest types that hold them (the values are the same): the kernels look
# STRETCH up at random, and 128 KB of int16 stay in a core's cache where 512 KB of int64
# did not, between the model's steps (the decoder's stage: -13 % time)
SQUASH = SQUASH.astype(np.int32)
STRETCH = STRETCH.astype(np.int16)
# mixer learning rates by a weight set's update count; counter learning rates: 65536 / (n + 1.5)
LR_STEPS = LR_HALF * (LR_FLOOR - 1)
LR_DECAY = np.array(
    [max(65536 // LR_FLOOR, 65536 * LR_HALF // (LR_HALF + n)) for n in range(LR_STEPS + 1)],
    np.int64,
)
RATE = np.array(
    [int(65536 * 2 // (2 * n + 3)) for n in range(max(COUNTER_LIMIT, APM_LIMIT) + 1)], np.int64
)

# hit count -> counter-map bucket: 1, 2, 3, 4, 5-6, 7-9, 10-14, 15-22, 23-35, 36-60,
# 61-120, 121+ (0: an empty counter, not mapped)
SM_CB = np.zeros(COUNTER_LIMIT + 1, np.int64)
for _i, _lo in enumerate((1, 2, 3, 4, 5, 7, 10, 15, 23, 36, 61, 121)):
    SM_CB[_lo:] = _i


# match length -> bucket for the first APM: 0-11, 12-15, 16-23, 24-31, 32
MLEN_BUCKET = np.zeros(MAX_LEN + 1, np.int64)
for _i, _lo in enumerate((0, 12, 16, 24, 32)):
    MLEN_BUCKET[_lo:] = _i
N_MROW = 21  # the first APM's rows per node: no match; (bucket, bit) x (recovered or not)


def _prefetch_codegen(context, builder, signature, args):
    from llvmlite import ir
    from numba.core import cgutils

    i32 = ir.IntType(32)
    arr = context.make_array(signature.args[0])(context, builder, args[0])
    ptr = builder.bitcast(builder.gep(arr.data, [args[1]]), ir.IntType(8).as_pointer())
    fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
    return context.get_dummy_value()


@nb.extending.intrinsic
def _prefetch(typingctx, arr, i):
    """A hint that element i of the C-contiguous array arr (counted from its first, over
    all dimensions) will be read soon: fetches its cache line, changes no value."""
    return nb.types.void(arr, nb.types.int64), _prefetch_codegen


# classes of the last byte for the second mixer: letters, white space, digits and ASCII
# punctuation, others
BYTE_CLASS = np.full(256, 3, np.int64)
for _c in range(33, 127):
    BYTE_CLASS[_c] = 2
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
    BYTE_CLASS[_c] = 0
for _c in b" \t\n\r":
    BYTE_CLASS[_c] = 1

# which of the 17 buckets of a context holds node n (0: high nibble; 1 + h: low nibble
# after high nibble h) and its entry (1..15) in that bucket
NODE_BUCKET = np.zeros(256, np.int64)
NODE_ENTRY = np.zeros(256, np.int64)
DEPTH = np.zeros(256, np.int64)
for _n in range(1, 256):
    _d = _n.bit_length() - 1
    DEPTH[_n] = _d
    if _d < 4:
        NODE_BUCKET[_n], NODE_ENTRY[_n] = 0, _n
    else:
        _k = _d - 4
        NODE_BUCKET[_n] = 1 + ((_n >> _k) & 15)
        NODE_ENTRY[_n] = (1 << _k) | (_n & ((1 << _k) - 1))
NODE_OF = np.zeros((17, 16), np.int64)  # the inverse: node of (bucket, entry)
for _n in range(1, 256):
    NODE_OF[NODE_BUCKET[_n], NODE_ENTRY[_n]] = _n

# per-lane integer state (columns of LaneModels.lane); L_U1: the byte above (record)
L_LEN, L_C1, L_MLANE, L_MPOS, L_MLEN, L_WORD = 0, 1, 2, 3, 4, 5
L_RLEN = 6  # the record length (the block's)
L_U1, L_PWORD = 7, 8  # the byte above (record); the last whole word's hash
L_W1, L_W2, L_W3 = 9, 10, 11  # bitmap: bytes above-left, above, above-right; 2, 3 rows up
L_HASH = 12  # N_HASHED context hashes follow
L_NL = L_HASH + N_HASHED  # text column: the start of the current line, of the previous
L_PNL = L_NL + 1
L_PPW = L_PNL + 1
L_MISS = L_PPW + 1  # how often the lane's match was kept past a wrong byte (0..)
L_TEXT = L_MISS + 1  # how much of the lane's recent bytes are text: TEXT_FULL all, 0 none
N_LANE = L_MISS + 2
# per lane, from _begin_one for _node_one and the update (LaneModels.pend): the match
# model's expected byte (-1: none), its stretched confidence and state; the column
# predictions (expected bytes, counter bases) and the second mixer's class of the last
# byte; how many orders have their bucket; the path's mass so far (of 2^24) and the last
# node's probability; the run model's byte (-1: none), order and run length; each hashed
# context's bucket start (-1)
P_EXP, P_SP, P_MST, P_CE0, P_CE1, P_CB0, P_CB1, P_CCLS, P_OC, P_MASS, P_LASTP = range(11)
P_RE, P_RK, P_RC, P_BASE = 11, 12, 13, 14
N_PEND = P_BASE + N_HASHED
P_KMASK = 2  # LaneModels.params: each hashed kind's bucket mask, then its start in ctab
P_KSTART = P_KMASK + N_HASHED


def _knots(count: int) -> np.ndarray:
    """The APM_KNOTS knots of a fresh APM or counter map, (APM_KNOTS,) u32: knot j at
    SQUASH[j * APM_STEP] (as 20 bits) with `count` observations."""
    p20 = SQUASH[np.arange(APM_KNOTS) * APM_STEP].astype(np.int64) << 4
    return ((p20 << KNOT_SHIFT) + count).astype(np.uint32)


MADV_NOHUGEPAGE = 15  # Linux (asm-generic/mman-common.h): no transparent huge pages here


def _libc_madvise():
    """libc's madvise(addr, length, advice) -> int, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        f = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return None
    f.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    f.restype = ctypes.c_int
    return f


_MADVISE = _libc_madvise()


def small_pages(a: np.ndarray) -> None:
    """Ask the kernel to back the untouched array `a` with small (4 KB) pages.

    numpy asks for transparent huge pages for large arrays. The hashed tables (up to
    ~200 MB) are touched at random from a block's first bytes, so all their 2 MB pages
    are faulted in at once, each zeroed whole and, on a machine whose memory is
    fragmented, first compacted. With small pages lcet10.txt decoded with 0.5-0.6 s of
    system time against 1.0-1.4 s, in the same user time, and sooner in 5 of 6
    alternating runs (2-core machine). A hint: values are the same either way, and
    where the call is missing nothing changes."""
    if _MADVISE is None or a.nbytes < 1 << 22:
        return
    lo = -(-a.ctypes.data // 4096) * 4096
    hi = (a.ctypes.data + a.nbytes) // 4096 * 4096
    _MADVISE(lo, hi - lo, MADV_NOHUGEPAGE)


class LaneModels:
    """Adaptive state of one block of B lanes of up to `capacity` bytes each, given the
    block's signalled record length `record` (0: none): per-lane histories and a model
    shared by the lanes (numpy arrays, sized from B * capacity with fixed caps). `off`
    (OFF_* bits, 0 in every stream) switches models off, to measure what each adds."""

    def __init__(self, lanes: int, capacity: int, record: int = 0, off: int = 0):
        capacity = max(int(capacity), 1)
        total = lanes * capacity
        bits = min(MAX_BUCKET_BITS, max(MIN_BUCKET_BITS, total.bit_length() + 1))
        mbits = min(MATCH_BITS_MAX, max(10, total.bit_length()))
        self.hist = np.zeros((lanes, capacity), np.uint8)
        self.lane = np.zeros((lanes, N_LANE), np.int64)
        self.lane[:, L_MLANE] = -1
        self.lane[:, L_TEXT] = TEXT_FULL
        self.pend = np.full((lanes, N_PEND), -1, np.int64)
        self.tree = np.zeros((lanes, 512), np.int64)  # the prior's subtree sums (begin)
        # per lane and depth of the byte's path, saved at mix time for the update: the
        # mixer inputs, the final mixer's output (16 bits), the weight sets, the two
        # mixers' outputs, the counter-map knots used
        self.inputs = np.zeros((lanes, 8, N_IN), np.int32)
        self.pmix = np.zeros((lanes, 8), np.int32)
        self.wsel = np.zeros((lanes, N_MIX, 8), np.int32)
        self.psub = np.zeros((lanes, N_MIX, 8), np.int32)
        self.smi = np.full((lanes, 8, N_HASHED), -1, np.int16)
        self.o1 = np.full((256 * 256,), 32768 << 16, np.uint32)  # (p16 << 16) | n
        # the hashed contexts' tables, one after another in ctab: kind k's 2^kb[k] buckets
        uniform = record or off & OFF_KINDS
        kb = [bits if uniform else max(MIN_BUCKET_BITS, bits + e) for e in KIND_BITS]
        starts = np.cumsum([0] + [16 << v for v in kb])
        self.ctab = np.zeros(int(starts[-1]), np.uint32)
        small_pages(self.ctab)
        bmb = min(BITMAP_BITS, max(MIN_BUCKET_BITS, total.bit_length() + 3))
        # record lanes only (text lanes read no bitmap context: 13-21 MB less memory)
        self.bitmap = np.full(BM_OFF[2] + (1 << bmb) if record else 0, 32768 << 16, np.uint32)
        self.colpred = np.full((N_COLPRED, (COL_CAP + 1) * 48), 32768 << 16, np.uint32)
        self.match = np.full(1 << mbits, -1, np.int32)  # lane * capacity + position
        # p(right) 16 bits, count; per (times recovered, length since)
        self.mconf = np.zeros((N_RECOVERED * (MAX_LEN + 1), 2), np.int64)
        self.mconf[:, 0] = 49152
        self.smap = np.tile(_knots(SM_INIT), N_HASHED * SM_BUCKETS)
        w = np.zeros((256 * N_MSTATE, N_IN + 1), np.int64)  # weights, update count
        init = 0 if off & OFF_INIT else INPUT_INIT
        w[:, IN_PRIOR] = 1 << MIX_SHIFT if off & OFF_INIT else PRIOR_INIT
        w[:, IN_O1] = 0 if off & OFF_INIT else O1_INIT
        w[:, IN_O1 + 1 : N_IN] = init
        self.weights = w
        w2 = np.zeros((N_SEL2 + N_SEL3 + N_SEL4 + N_SEL5, N_IN + 1), np.int64)
        w2[:, IN_PRIOR:N_IN] = w[0, IN_PRIOR:N_IN]
        w2[N_SEL2:, IN_MATCH] = MATCH_INIT
        self.weights2 = w2
        wf = np.zeros((256, N_MIX + 1), np.int64)  # the final mixer of the five, per node
        wf[:, :N_MIX] = FINAL_INIT

        self.final = wf
        knots = _knots(APM_INIT)
        self.apm1 = np.tile(knots, (256 * N_MROW, 1))
        self.apm2 = np.tile(knots, (256 * 256, 1))
        # the prior's maps: an APM per node, then (text lanes only) per (last byte, node)
        self.pmap = np.tile(knots, (256 + (0 if record else 256 * 256), 1))
        self.apm3 = np.tile(knots, (256 * 256 if record else 0, 1))  # record lanes only
        self.apm4 = np.tile(knots, (1 << APM4_BITS, 1))
        self.apm5 = np.tile(knots, (N_SEL5 if record else 0, 1))  # record lanes only
        # the order-3 and order-4 APMs (rows 0.., 2^APM4_BITS..): text lanes only
        self.apm6 = np.tile(knots, (0 if record else 2 << APM4_BITS, 1))
        # block parameters: [0] the record length signalled for the block (0: none);
        # [1] models switched off (OFF_* bits: for measuring what each adds; a stream
        # always has 0); [P_KMASK + k] hashed kind k's bucket mask, [P_KSTART + k] its
        # first entry in ctab
        self.params = np.zeros(P_KSTART + N_HASHED, np.int64)
        self.params[1] = off
        self.params[P_KMASK : P_KMASK + N_HASHED] = [(1 << v) - 1 for v in kb]
        self.params[P_KSTART : P_KSTART + N_HASHED] = starts[:-1]
        # the run model: per order's context hash a slot of (check 16 bits, run count 8,
        # last byte 8); its confidence per (order, run count up to 15): p(right), count
        self.runs = np.zeros(1 << (bits + RUN_BITS_EXTRA), np.uint32)
        self.rconf = np.zeros((len(ORDERS), RUN_MAX + 1, 2), np.int64)
        self.rconf[:, :, 0] = 49152
        # the indirect context: the two bytes that last followed each pair of bytes (records)
        self.follow = np.zeros(65536, np.int64)
        if record:
            self.params[0] = record
            self.lane[:, L_RLEN] = record

    def arrays(self):
        return (
            self.hist,
            self.lane,
            self.pend,
            self.tree,
            self.inputs,
            self.pmix,
            self.wsel,
            self.psub,
            self.smi,
            self.o1,
            self.ctab,
            self.bitmap,
            self.colpred,
            self.match,
            self.mconf,
            self.smap,
            self.weights,
            self.weights2,
            self.final,
            self.apm1,
            self.apm2,
            self.apm3,
            self.apm4,
            self.params,
            self.runs,
            self.rconf,
            self.apm5,
            self.apm6,
            self.pmap,
            self.follow,
        )


@_jit
def _st(p):
    return STRETCH[min(65535, max(1, p))]


@_jit
def _sq(x):
    return SQUASH[max(-3072, min(3072, x)) + 3072]


@_jit
def _bucket(h, sub, mask):
    """(bucket start, check word) of sub-bucket `sub` (0..16) of context hash h."""
    x = (h + (sub + 1) * 0x2545F4914F6CDD1D) * 0x5851F42D4C957F2D
    x ^= (x >> 29) & 0x7FFFFFFFF
    x *= 0x14057B7EF767814F
    idx = (x >> 20) & mask
    chk = ((x >> 40) & 0xFFFFFF) | 1
    return idx * 16, chk


@_jit
def _knot_of(sx):
    """(knot, weight of the next knot in 1/APM_STEP) of a stretched probability sx."""
    s = sx + 3072
    k = min(s >> APM_SHIFT, APM_KNOTS - 2)
    return k, s - (k << APM_SHIFT)


@_jit
def _apm_idx(pm):
    """(knot, weight of the next knot in 1/APM_STEP) of a probability."""
    return _knot_of(_st(pm))


@_jit
def _row16(h, salt):
    """A 16-bit APM row of a raster lane from the pixel context h (version 11)."""
    return ((h + salt) * 0x9E3779B97F4A7C15 >> 40) & 0xFFFF


@_jit
def _set11(h, salt):
    """An 11-bit mixer weight set of a raster lane from the pixel context h (version 11)."""
    return ((h + salt) * 0x9E3779B97F4A7C15 >> 53) & 2047


@_jit
def _is_raster(lane, b, off):
    """Whether lane b is a raster (version 11): records of at least RASTER_MIN bytes and
    mostly binary recent bytes (text score below TEXT_BINARY), unless OFF_RASTER."""
    return (
        lane[b, L_RLEN] >= RASTER_MIN and lane[b, L_TEXT] < TEXT_BINARY and (off & OFF_RASTER) == 0
    )


@_jit
def _bitmap_ctx(n, c1, w1, w2, w3):
    """The three bit-level 2-D contexts of node n (depth d) of a bitmap row: the pixels
    to the left (the bits of the byte so far, then the previous byte), above (w1: the
    bytes above-left, above and above-right, 24 bits), two and three rows up (w2, w3):
    12 and 20 bits, and a wider one hashed to BITMAP_BITS."""
    d = DEPTH[n]
    cur = (c1 << d) | (n - (1 << d))
    pos = 15 - d  # the bit of w1 above the current pixel
    ca = (cur & 15) | (((w1 >> (pos - 2)) & 31) << 4) | (((w2 >> (pos - 1)) & 7) << 9)
    cb = (cur & 127) | (((w1 >> (pos - 4)) & 255) << 7) | (((w2 >> (pos - 2)) & 31) << 15)
    cc = (
        (cur & 255)
        | (((w1 >> (pos - 5)) & 2047) << 8)
        | (((w2 >> (pos - 3)) & 127) << 19)
        | (((w3 >> (pos - 1)) & 7) << 26)
    )
    cc = ((cc + 1) * 0x9E3779B97F4A7C15) >> 30
    return ca, cb, cc


@_jit
def _bitmap_wide(n, c1, w1, w2, w3):
    """The N_WIDE wider bit-level contexts of node n of a bitmap row, hashed (as the third
    of _bitmap_ctx): 14 pixels to the left with 3 above; 2 to the left with 16 above and
    9 two rows up; 6 to the left with 9 above, 7 two rows up and 5 three rows up."""
    d = DEPTH[n]
    cur = (c1 << d) | (n - (1 << d))
    pos = 15 - d
    cd = (cur & 0x3FFF) | (((w1 >> (pos - 1)) & 7) << 14) | (1 << 40)
    ce = (cur & 3) | (((w1 >> (pos - 8)) & 0xFFFF) << 2) | (((w2 >> (pos - 4)) & 0x1FF) << 18)
    ce |= 2 << 40
    cf = (cur & 63) | (((w1 >> (pos - 4)) & 0x1FF) << 6) | (((w2 >> (pos - 3)) & 0x7F) << 15)
    cf |= (((w3 >> (pos - 2)) & 0x1F) << 22) | (3 << 40)
    cd = ((cd + 1) * 0x9E3779B97F4A7C15) >> 30
    ce = ((ce + 1) * 0x9E3779B97F4A7C15) >> 30
    cf = ((cf + 1) * 0x9E3779B97F4A7C15) >> 30
    return cd, ce, cf


@_jit
def _col_pred(hist, b, t, rl):
    """The column predictions of byte t of a record lane (record length rl): expected
    bytes (the byte above; the byte above plus its difference to the one above it; -1
    where the lane is too short) and their counters' bases in the colpred table: by
    column and by whether the prediction held for byte t - 1 (then depth, bit state)."""
    col = min(t % rl, COL_CAP)
    e0 = np.int64(hist[b, t - rl]) if t >= rl else -1
    e1 = (2 * e0 - np.int64(hist[b, t - 2 * rl])) & 255 if t >= 2 * rl else -1
    ok0 = 0
    ok1 = 0
    if t >= rl + 1:
        prev = np.int64(hist[b, t - 1])
        ok0 = 1 if np.int64(hist[b, t - 1 - rl]) == prev else 0
        if t >= 2 * rl + 1:
            v = (2 * np.int64(hist[b, t - 1 - rl]) - np.int64(hist[b, t - 1 - 2 * rl])) & 255
            ok1 = 1 if v == prev else 0
    return e0, e1, (col * 2 + ok0) * 24, (col * 2 + ok1) * 24


@_jit
def _pred_state(e, n, d):
    """0/1: the bit an expected byte e predicts at node n (depth d) on its path; 2: off
    the path (or no expected byte)."""
    if e >= 0 and ((256 + e) >> (8 - d)) == n:
        return (e >> (7 - d)) & 1
    return 2


@_jit
def _mconf_row(lane, b, mlen):
    """The match confidence's row of lane b's match: by the times it was recovered (kept
    past a wrong byte, up to N_RECOVERED - 1) and its length since (up to MAX_LEN)."""
    return mlen + (MAX_LEN + 1) * min(lane[b, L_MISS], N_RECOVERED - 1)


@_jit
def _mrow(e, mlen, n, d, miss):
    """The match state of node n (depth d) for the first APM: 0 without an expected byte
    e on this node, else 1 + 2 * (length bucket) + e's bit, + 10 for a recovered match
    (`miss` > 0; version 9)."""
    if e < 0 or ((256 + e) >> (8 - d)) != n:
        return 0
    return 1 + 2 * MLEN_BUCKET[min(mlen, MAX_LEN)] + ((e >> (7 - d)) & 1) + (10 if miss > 0 else 0)


@_jit
def _apm4_row(c2, n):
    """The order-2 APM's row of node n after the bytes c2 = (byte t - 2) << 8 | byte t - 1
    (and the order-3 and order-4 APMs' rows, from the last 3 and 4 bytes the same way)."""
    h = (c2 * 0x100 + n + 1) * 0x9E3779B97F4A7C15
    return (h >> 40) & ((1 << APM4_BITS) - 1)


@_jit
def _smap(smap, k, v):
    """The counter map of context kind k: (the mixer input, the mean of the counter's and
    the map's stretch; the knot to train, the nearer one) of counter value v
    (probability << 16 | hit count, count > 0)."""
    sv = STRETCH[v >> 16] + 3072
    kn = min(sv >> APM_SHIFT, APM_KNOTS - 2)
    f = sv - (kn << APM_SHIFT)
    r = (k * SM_BUCKETS + SM_CB[v & 0xFFFF]) * APM_KNOTS + kn
    q = ((smap[r] >> KNOT_SHIFT) * (APM_STEP - f) + (smap[r + 1] >> KNOT_SHIFT) * f) >> (
        APM_SHIFT + 4
    )
    return (STRETCH[v >> 16] + _st(q)) >> 1, r + (1 if 2 * f >= APM_STEP else 0)


@_jit
def _inp(smap, smi, off, b, d, k, v):
    """The mixer input of hashed counter value v of kind k at depth d: 0 for an empty
    counter; for the orders and the word context, the counter's stretch once it is in
    hit-count bucket SM_MAXCB; else through the counter map (noting the knot to train in
    smi)."""
    if (v & 0xFFFF) == 0:
        return 0
    if off & OFF_SMAP or (k <= H_WORD and SM_CB[v & 0xFFFF] >= SM_MAXCB):
        return STRETCH[v >> 16]
    s, r = _smap(smap, k, v)
    smi[b, d, k] = r
    return s


@_inline
def _begin_one(counts, b, st):
    """Start lane b's next byte: the prior's subtree sums, the match model's expected
    byte, the column predictions and the high-nibble bucket of every hashed context, kept
    in tree[b] and pend[b] for _node_one. Reads the shared state, writes lane b's only."""
    (
        hist,
        lane,
        pend,
        tree,
        inputs,
        pmix,
        wsel,
        psub,
        smi,
        o1,
        ctab,
        bm,
        cpt,
        match,
        mconf,
        smap,
        w,
        w2,
        wf,
        a1,
        a2,
        a3,
        a4,
        params,
        runs,
        rconf,
        a5,
        a6,
        pmap,
        follow,
    ) = st
    tr = tree[b]
    for i in range(256):
        tr[256 + i] = counts[i]
    for n in range(255, 0, -1):
        tr[n] = tr[2 * n] + tr[2 * n + 1]
    pb = pend[b]
    rec = lane[b, L_RLEN] > 0
    ce0 = ce1 = cb0 = cb1 = -1
    ccls = BYTE_CLASS[lane[b, L_C1]]
    if rec:
        ce0, ce1, cb0, cb1 = _col_pred(hist, b, lane[b, L_LEN], lane[b, L_RLEN])
        ccls = ((cb0 // 24) & 1) * 2 + ((cb1 // 24) & 1)  # which predictions held
    pb[P_CE0], pb[P_CE1], pb[P_CB0], pb[P_CB1], pb[P_CCLS] = ce0, ce1, cb0, cb1, ccls
    # match model: expected byte
    e = -1
    mlen = 0
    ml = lane[b, L_MLANE]
    if ml >= 0:
        mp = lane[b, L_MPOS]
        if mp < lane[ml, L_LEN]:
            e = np.int64(hist[ml, mp])
            mlen = min(lane[b, L_MLEN], MAX_LEN)
    mi = _mconf_row(lane, b, mlen)
    pb[P_EXP] = e
    pb[P_SP] = _st(mconf[mi, 0]) if e >= 0 else 0
    pb[P_MST] = (1 if mlen < LONG_MATCH else 2) if e >= 0 else 0
    pb[P_MASS] = COUNT_TOTAL - 256
    # run model: the longest order whose slot remembers a byte that followed it
    pb[P_RE] = -1
    rmask = runs.shape[0] - 1
    for k in range(len(ORDERS) - 1 if params[1] & OFF_RUN == 0 else -1, -1, -1):
        h = lane[b, L_HASH + k]
        v = np.int64(runs[(h >> 24) & rmask])
        if (v >> 16) == ((h >> 8) & 0xFFFF) and v & 0xFF00:
            pb[P_RE] = v & 0xFF
            pb[P_RK] = k
            pb[P_RC] = min((v >> 8) & 0xFF, RUN_MAX)
            break
    _find_buckets(b, 0, lane, pend, ctab, params)


@_inline
def _find_buckets(b, s, lane, pend, ctab, params):
    """pend[b]: the start of sub-bucket s of each hashed context of lane b (-1 where none
    of its WAYS places holds this context's check word) and how many of the orders have
    theirs."""
    rec = lane[b, L_RLEN] > 0
    nk = K_REC if rec else K_TEXT
    oc = 0
    for k in range(nk):
        base, chk = _bucket(lane[b, L_HASH + k], s, params[P_KMASK + k])
        base += params[P_KSTART + k]
        found = -1
        for way in range(1 if params[1] & OFF_WAYS else WAYS):
            if np.int64(ctab[base ^ (16 * way)]) == chk:
                found = base ^ (16 * way)
                break
        base = found
        if k == H_COLUMN and lane[b, L_HASH + k] == 0:
            base = -1
        pend[b, P_BASE + k] = base
        if k < len(ORDERS) and base >= 0:
            oc += 1
    if params[1] & OFF_BIGRAM and not rec:
        pend[b, P_BASE + H_BIGRAM] = -1
    if params[1] & OFF_WORDS and not rec:
        pend[b, P_BASE + H_WORD + 1] = pend[b, P_BASE + H_WORD + 2] = -1
    if params[1] & OFF_COLUMN and not rec:
        pend[b, P_BASE + H_COLUMN] = -1
    if params[1] & OFF_INDIRECT and rec:
        pend[b, P_BASE + H_INDIRECT] = -1
    pend[b, P_OC] = oc


# ---- prefetching: hints only, no value depends on them ---------------------------------
# A byte's nodes read rows of tables far larger than the caches (the hashed contexts'
# buckets, APMs and mixer weight sets keyed by bytes and hashes), and one lane's reads
# depend on each other. The loops over lanes therefore first ask for the cache lines
# every lane's next step will read (_prefetch_begin, _prefetch_node), so that their
# misses overlap, then compute.


@_inline
def _prefetch_row(a, r, width):
    """The cache lines of row r of a table with `width` entries a row."""
    i = r * width
    for j in range(0, width, 64 // a.itemsize):
        _prefetch(a, i + j)
    _prefetch(a, i + width - 1)


@_inline
def _prefetch_buckets(b, s, lane, ctab, params):
    """The WAYS places of sub-bucket s of each hashed context of lane b."""
    nk = K_REC if lane[b, L_RLEN] > 0 else K_TEXT
    for k in range(nk):
        base, _ = _bucket(lane[b, L_HASH + k], s, params[P_KMASK + k])
        base += params[P_KSTART + k]
        for way in range(WAYS):
            _prefetch(ctab, base ^ (16 * way))


@_inline
def _prefetch_begin(b, st):
    """What _begin_one of lane b reads from the shared tables: the run model's slots and
    the high-nibble buckets."""
    (
        hist,
        lane,
        pend,
        tree,
        inputs,
        pmix,
        wsel,
        psub,
        smi,
        o1,
        ctab,
        bm,
        cpt,
        match,
        mconf,
        smap,
        w,
        w2,
        wf,
        a1,
        a2,
        a3,
        a4,
        params,
        runs,
        rconf,
        a5,
        a6,
        pmap,
        follow,
    ) = st
    rmask = runs.shape[0] - 1
    for k in range(len(ORDERS)):
        _prefetch(runs, (lane[b, L_HASH + k] >> 24) & rmask)
    _prefetch_buckets(b, 0, lane, ctab, params)


@_inline
def _prefetch_node(n, b, st):
    """What _node_one(n, b, st) of a lane that is not a raster reads from the tables keyed
    by bytes and hashes (at depth 4 the low nibble's buckets; the rows of the mixers 3-5
    and of the APMs)."""
    (
        hist,
        lane,
        pend,
        tree,
        inputs,
        pmix,
        wsel,
        psub,
        smi,
        o1,
        ctab,
        bm,
        cpt,
        match,
        mconf,
        smap,
        w,
        w2,
        wf,
        a1,
        a2,
        a3,
        a4,
        params,
        runs,
        rconf,
        a5,
        a6,
        pmap,
        follow,
    ) = st
    off = params[1]
    if _is_raster(lane, b, off):
        return
    d = DEPTH[n]
    if d == 4:
        _prefetch_buckets(b, NODE_BUCKET[n], lane, ctab, params)
    c1 = lane[b, L_C1]
    tt = lane[b, L_LEN]
    h2 = np.int64(hist[b, tt - 2]) if tt >= 2 else 0
    c2 = h2 * 256 + c1
    _prefetch(o1, (c1 << 8) + n)
    wd = w2.shape[1]
    _prefetch_row(w2, N_SEL2 + c1 * 8 + d, wd)
    _prefetch_row(w2, N_SEL2 + N_SEL3 + h2 * 8 + d, wd)
    _prefetch_row(a2, (c1 << 8) + n, APM_KNOTS)
    _prefetch_row(a4, _apm4_row(c2, n), APM_KNOTS)
    _prefetch_row(pmap, n, APM_KNOTS)
    if lane[b, L_RLEN] > 0:
        _prefetch_row(a3, (lane[b, L_U1] << 8) + n, APM_KNOTS)
        return
    _prefetch_row(pmap, 256 + (c1 << 8) + n, APM_KNOTS)
    pix = ((lane[b, L_WORD] + c1 * 0x1000193) * 0x9E3779B97F4A7C15 >> 52) & 4095
    _prefetch_row(w2, N_SEL2 + N_SEL3 + N_SEL4 + pix * 8 + d, wd)
    c3 = (np.int64(hist[b, tt - 3]) if tt >= 3 else 0) << 16 | c2
    _prefetch_row(a6, _apm4_row(c3, n), APM_KNOTS)
    c4 = (np.int64(hist[b, tt - 4]) if tt >= 4 else 0) << 24 | c3
    _prefetch_row(a6, _apm4_row(c4, n) + APM4_ROWS, APM_KNOTS)


@_inline
def _node_one(n, b, st):
    """p(bit = 1) in 1/65536 (1..65535) of node n, the next binary decision of lane b's
    byte (after _begin_one for it and _node_one for the nodes above n). The mixers'
    inputs and outputs are kept by depth for the update. Writes lane b's state only."""
    (
        hist,
        lane,
        pend,
        tree,
        inputs,
        pmix,
        wsel,
        psub,
        smi,
        o1,
        ctab,
        bm,
        cpt,
        match,
        mconf,
        smap,
        w,
        w2,
        wf,
        a1,
        a2,
        a3,
        a4,
        params,
        runs,
        rconf,
        a5,
        a6,
        pmap,
        follow,
    ) = st
    off = params[1]
    d = DEPTH[n]
    if d == 4:  # the low nibble's bucket, now that the high nibble is known
        _find_buckets(b, NODE_BUCKET[n], lane, pend, ctab, params)
    pb = pend[b]
    tr = tree[b]
    x = inputs[b, d]  # (N_IN,): the inputs of this node, kept for update()
    c1 = lane[b, L_C1]
    r0 = c1 << 8
    if d > 0:  # the mass of the path to n: its parent's, times the bit's probability
        m1 = (pb[P_MASS] * pb[P_LASTP]) >> 16
        pb[P_MASS] = m1 if n & 1 else pb[P_MASS] - m1
    rec = 3 if lane[b, L_RLEN] > 0 else 0
    nk = K_REC if rec else K_TEXT
    ni = N_IN if rec else N_IN_TEXT
    j = NODE_ENTRY[n]
    x[IN_BIAS] = 256
    x[IN_PRIOR] = _st((tr[2 * n + 1] << 16) // tr[n])
    v = np.int64(o1[r0 + n])
    x[IN_O1] = STRETCH[v >> 16] if (v & 0xFFFF) else 0
    # the prior through the node's map, which learns what the prior's probabilities are
    # worth in this block (version 11: -0.04 to -0.1 % on texts and code, -0.3 % on sum),
    # in a text lane the mean with the map of (last byte, node)
    kp, fp = _knot_of(x[IN_PRIOR])
    q = ((pmap[n, kp] >> KNOT_SHIFT) * (APM_STEP - fp) + (pmap[n, kp + 1] >> KNOT_SHIFT) * fp) >> (
        APM_SHIFT + 4
    )
    x[IN_PMAP] = _st(q)
    if not rec:
        r = 256 + r0 + n
        q = (
            (pmap[r, kp] >> KNOT_SHIFT) * (APM_STEP - fp) + (pmap[r, kp + 1] >> KNOT_SHIFT) * fp
        ) >> (APM_SHIFT + 4)
        x[IN_PMAP] = (x[IN_PMAP] + _st(q)) >> 1
    if off & OFF_PMAP:
        x[IN_PMAP] = 0
    for k in range(nk):
        base = pb[P_BASE + k]
        x[IN_H0 + k] = 0
        smi[b, d, k] = -1
        if base >= 0:
            x[IN_H0 + k] = _inp(smap, smi, off, b, d, k, np.int64(ctab[base + j]))
    # the 5th mixer's selector (12 bits): in a record lane the node's pixel context (it also
    # keys an APM), in a text lane a hash of the current word and the last byte (version 10)
    pix = -1
    ca = cb = cc = cd = ce = cf = 0
    ras = rec > 0 and _is_raster(lane, b, off)
    if rec:
        ca, cb, cc = _bitmap_ctx(n, c1, lane[b, L_W1], lane[b, L_W2], lane[b, L_W3])
        cd, ce, cf = _bitmap_wide(n, c1, lane[b, L_W1], lane[b, L_W2], lane[b, L_W3])
        pix = ca if (off & OFF_PIXEL) == 0 else -1
    elif (off & OFF_WORDMIX) == 0:
        pix = ((lane[b, L_WORD] + c1 * 0x1000193) * 0x9E3779B97F4A7C15 >> 52) & 4095
    if rec and off & OFF_BITMAP:
        x[IN_BM] = x[IN_BM + 1] = x[IN_BM + 2] = 0
        x[IN_WIDE] = x[IN_WIDE + 1] = x[IN_WIDE + 2] = 0
    elif rec:
        bmask = bm.shape[0] - BM_OFF[2] - 1
        v = np.int64(bm[ca])
        x[IN_BM] = STRETCH[v >> 16] if (v & 0xFFFF) else 0
        v = np.int64(bm[BM_OFF[1] + cb])
        x[IN_BM + 1] = STRETCH[v >> 16] if (v & 0xFFFF) else 0
        v = np.int64(bm[BM_OFF[2] + (cc & bmask)])
        x[IN_BM + 2] = STRETCH[v >> 16] if (v & 0xFFFF) else 0
        x[IN_WIDE] = x[IN_WIDE + 1] = x[IN_WIDE + 2] = 0
        if (off & OFF_WIDE) == 0:
            v = np.int64(bm[BM_OFF[2] + (cd & bmask)])
            x[IN_WIDE] = STRETCH[v >> 16] if (v & 0xFFFF) else 0
            v = np.int64(bm[BM_OFF[2] + (ce & bmask)])
            x[IN_WIDE + 1] = STRETCH[v >> 16] if (v & 0xFFFF) else 0
            v = np.int64(bm[BM_OFF[2] + (cf & bmask)])
            x[IN_WIDE + 2] = STRETCH[v >> 16] if (v & 0xFFFF) else 0
    if rec and off & OFF_COLPRED:
        x[IN_CP] = x[IN_CP + 1] = 0
    elif rec:
        v = np.int64(cpt[0, pb[P_CB0] + d * 3 + _pred_state(pb[P_CE0], n, d)])
        x[IN_CP] = STRETCH[v >> 16] if (v & 0xFFFF) else 0
        v = np.int64(cpt[1, pb[P_CB1] + d * 3 + _pred_state(pb[P_CE1], n, d)])
        x[IN_CP + 1] = STRETCH[v >> 16] if (v & 0xFFFF) else 0
    x[IN_RUN] = 0
    re = pb[P_RE]
    if re >= 0 and ((256 + re) >> (8 - d)) == n:
        sr = _st(rconf[pb[P_RK], pb[P_RC], 0])
        x[IN_RUN] = sr if (re >> (7 - d)) & 1 else -sr
    st = 0
    x[IN_MATCH] = 0
    e = pb[P_EXP]
    if e >= 0 and ((256 + e) >> (8 - d)) == n:
        st = pb[P_MST]
        x[IN_MATCH] = pb[P_SP] if (e >> (7 - d)) & 1 else -pb[P_SP]
    sel = n * N_MSTATE + st + rec
    sel2 = (((pb[P_OC] * 8 + d) * 3 + st) * 2 + (1 if rec else 0)) * 4 + pb[P_CCLS]
    wsel[b, 0, d] = sel
    wsel[b, 1, d] = sel2
    sel3 = N_SEL2 + c1 * 8 + d
    tt = lane[b, L_LEN]
    c2b = np.int64(hist[b, tt - 2]) if tt >= 2 else 0
    sel4 = N_SEL2 + N_SEL3 + c2b * 8 + d
    if ras:  # a raster: mixers 3 and 4 by pixel contexts, not by bytes and depth
        sel3 = N_SEL2 + _set11(cb, 1)
        sel4 = N_SEL2 + N_SEL3 + _set11(cc, 7)
    wsel[b, 2, d] = sel3
    wsel[b, 3, d] = sel4
    ws4 = w2[sel4]
    dot4 = np.int64(0)
    sel5 = N_SEL2 + N_SEL3 + N_SEL4 + pix * 8 + (0 if ras else d)
    wsel[b, 4, d] = sel5
    ws = w[sel]
    ws2 = w2[sel2]
    ws3 = w2[sel3]
    dot = np.int64(0)
    dot2 = np.int64(0)
    dot3 = np.int64(0)
    nm = IN_WIDE if rec else ni  # mixers 2, 3 and 4 do without the wide bitmap contexts
    for i in range(nm):
        xi = np.int64(x[i])
        dot += ws[i] * xi
        dot2 += ws2[i] * xi
        dot3 += ws3[i] * xi
        dot4 += ws4[i] * xi
    for i in range(nm, ni):
        dot += ws[i] * np.int64(x[i])
    p1 = _sq(dot >> MIX_SHIFT)
    p2 = _sq(dot2 >> MIX_SHIFT)
    p3 = _sq(dot3 >> MIX_SHIFT)
    psub[b, 0, d] = p1
    psub[b, 1, d] = p2
    psub[b, 2, d] = p3
    p4 = _sq(dot4 >> MIX_SHIFT)
    psub[b, 3, d] = p4
    p5 = 32768  # stretch 0: no 5th mixer without a pixel context
    if pix >= 0:
        ws5 = w2[sel5]
        dot5 = np.int64(0)
        for i in range(ni):
            dot5 += ws5[i] * np.int64(x[i])
        p5 = _sq(dot5 >> MIX_SHIFT)
    psub[b, 4, d] = p5
    wn = wf[0 if ras else n]  # a raster's pixels share one final mixer (row 0, no node)
    dotf = wn[0] * STRETCH[p1] + wn[1] * STRETCH[p2] + wn[2] * STRETCH[p3] + wn[3] * STRETCH[p4]
    pm = _sq((dotf + wn[4] * STRETCH[p5]) >> MIX_SHIFT)
    if off & OFF_MIXER2:
        pm = p1
    pmix[b, d] = pm
    sv = _st(pm) + 3072
    k1 = min(sv >> APM_SHIFT, APM_KNOTS - 2)
    f1 = sv - (k1 << APM_SHIFT)
    g1 = APM_STEP - f1
    r = n * N_MROW + _mrow(e, lane[b, L_MLEN], n, d, lane[b, L_MISS])
    q1 = ((a1[r, k1] >> KNOT_SHIFT) * g1 + (a1[r, k1 + 1] >> KNOT_SHIFT) * f1) >> (APM_SHIFT + 4)
    r = _row16(cd, 11) if ras else r0 + n
    q2 = ((a2[r, k1] >> KNOT_SHIFT) * g1 + (a2[r, k1 + 1] >> KNOT_SHIFT) * f1) >> (APM_SHIFT + 4)
    q3 = 0
    if rec:
        r = _row16(cb, 1) if ras else (lane[b, L_U1] << 8) + n
        q3 = ((a3[r, k1] >> KNOT_SHIFT) * g1 + (a3[r, k1 + 1] >> KNOT_SHIFT) * f1) >> (
            APM_SHIFT + 4
        )
    tt = lane[b, L_LEN]
    c2 = (np.int64(hist[b, tt - 2]) if tt >= 2 else 0) * 256 + c1
    r = _row16(ce, 13) if ras else _apm4_row(c2, n)
    q4 = ((a4[r, k1] >> KNOT_SHIFT) * g1 + (a4[r, k1 + 1] >> KNOT_SHIFT) * f1) >> (APM_SHIFT + 4)
    q6 = q7 = 0
    apm34 = not rec and (off & OFF_APM34) == 0
    if apm34:  # text: the order-3 and order-4 APMs
        c3 = (np.int64(hist[b, tt - 3]) if tt >= 3 else 0) << 16 | c2
        r = _apm4_row(c3, n)
        q6 = ((a6[r, k1] >> KNOT_SHIFT) * g1 + (a6[r, k1 + 1] >> KNOT_SHIFT) * f1) >> (
            APM_SHIFT + 4
        )
        r = _apm4_row((np.int64(hist[b, tt - 4]) if tt >= 4 else 0) << 24 | c3, n) + APM4_ROWS
        q7 = ((a6[r, k1] >> KNOT_SHIFT) * g1 + (a6[r, k1 + 1] >> KNOT_SHIFT) * f1) >> (
            APM_SHIFT + 4
        )
    q5 = 0
    if rec and pix >= 0:
        r = pix * 8 + (0 if ras else d)
        q5 = ((a5[r, k1] >> KNOT_SHIFT) * g1 + (a5[r, k1 + 1] >> KNOT_SHIFT) * f1) >> (
            APM_SHIFT + 4
        )
    if off & OFF_APM2:  # version 3's APMs
        p = (pm + q1 + q2 + q3) >> 2 if rec else (2 * pm + q1 + q2) >> 2
    elif rec and pix >= 0:
        p = (pm + q1 + q2 + q3 + q4 + q5 + 3) // 6
    elif rec:
        p = (pm + q1 + q2 + q3 + q4 + 2) // 5
    elif apm34:
        p = (2 * pm + q1 + q2 + 2 * q4 + 2 * q6 + 2 * q7 + 5) // 10
    else:
        p = (2 * pm + q1 + q2 + 2 * q4 + 2) // 6
    p = min(65535, max(1, p))
    pb[P_LASTP] = p
    if pb[P_MASS] < LAZY_MASS:  # a surprise: nothing learns from this node
        pmix[b, d] = 0
    return p


@_jit
def _ctx_hash(hist, b, t, order):
    h = np.int64(order) * 0x1F3D5B79
    for i in range(t - order, t):
        v = np.int64(hist[b, i]) if i >= 0 else 0
        h = (h + v + 1) * 0x2127599BF4325C37
        h ^= (h >> 23) & 0x1FFFFFFFFFF
    return h


@_jit
def _learn(v, y, limit):
    p = v >> 16
    n = v & 0xFFFF
    p += (((y << 16) - p) * RATE[n]) >> 16
    p = min(65535, max(1, p))
    return (p << 16) | min(n + 1, limit)


@_jit
def _learn_ctx(v, y, forget):
    """A hashed context's counter after bit y (_learn); with `forget`, a counter that
    was confidently wrong (p of the bit below 1/8) first drops its hit count to at most
    FORGET_COUNT, so it adapts fast again (nonstationary: kennedy.xls -0.9 %, but
    -0.1 to -0.3 % on long texts, so only in record lanes)."""
    p = v >> 16
    n = v & 0xFFFF
    if forget and ((y == 1 and p < 8192) or (y == 0 and p > 57344)):
        n = min(n, FORGET_COUNT)
    p += (((y << 16) - p) * RATE[n]) >> 16
    p = min(65535, max(1, p))
    return (p << 16) | min(n + 1, COUNTER_LIMIT)


@_jit
def _learn_knot(v, y, limit):
    """An APM or counter-map knot v ((probability, 20 bits) << KNOT_SHIFT | count, a u32)
    after bit y; the count, which sets the rate, stops at `limit`."""
    p = v >> KNOT_SHIFT
    n = v & KNOT_COUNT
    p += (((y << 20) - p) * RATE[n]) >> 16
    return (p << KNOT_SHIFT) | min(n + 1, limit)


@_jit
def _learn_sm(v, y):
    return _learn_knot(v, y, SM_LIMIT)


@_jit
def _learn_apm(v, y):
    return _learn_knot(v, y, APM_LIMIT)


@_inline
def _update_one(sym, b, st):
    (
        hist,
        lane,
        pend,
        tree,
        inputs,
        pmix,
        wsel,
        psub,
        smi,
        o1,
        ctab,
        bm,
        cpt,
        match,
        mconf,
        smap,
        w,
        w2,
        wf,
        a1,
        a2,
        a3,
        a4,
        params,
        runs,
        rconf,
        a5,
        a6,
        pmap,
        follow,
    ) = st
    cap = hist.shape[1]
    c1 = lane[b, L_C1]
    e = pend[b, P_EXP]
    mlen = min(lane[b, L_MLEN], MAX_LEN)
    mi = _mconf_row(lane, b, mlen)
    # hashed contexts: the high-nibble bucket and the actual low-nibble bucket
    nk = K_REC if lane[b, L_RLEN] > 0 else K_TEXT
    forget = lane[b, L_RLEN] > 0 and (params[1] & OFF_FORGET) == 0  # after a surprise
    ras = lane[b, L_RLEN] > 0 and _is_raster(lane, b, params[1])
    plim = RASTER_LIMIT if ras else BITMAP_LIMIT  # the pixel context's counters
    for k in range(nk):
        h = lane[b, L_HASH + k]
        if h == 0 and k == H_COLUMN:  # no column context (no line above yet)
            continue
        for s in (0, 1 + (sym >> 4)):
            base, chk = _bucket(h, s, params[P_KMASK + k])
            base += params[P_KSTART + k]
            found = -1
            low = base
            for way in range(1 if params[1] & OFF_WAYS else WAYS):
                cand = base ^ (16 * way)
                if np.int64(ctab[cand]) == chk:
                    found = cand
                    break
                if (np.int64(ctab[cand + 1]) & 0xFFFF) < (np.int64(ctab[low + 1]) & 0xFFFF):
                    low = cand
            if found < 0:  # claim the place whose first counter has the fewest hits
                found = low
                ctab[found] = chk
                for j in range(1, 16):
                    ctab[found + j] = 32768 << 16
            base = found
            top = 0 if s == 0 else 4  # depth of the bucket's first node
            for d in range(top, top + 4):
                y = (sym >> (7 - d)) & 1
                n = (256 + sym) >> (8 - d)
                j = NODE_ENTRY[n]
                ctab[base + j] = _learn_ctx(np.int64(ctab[base + j]), y, forget)
    # run model: its confidence (while the byte so far agrees), then every order's slot
    re = pend[b, P_RE]
    if re >= 0:
        rk, rc = pend[b, P_RK], pend[b, P_RC]
        for d in range(8):
            if ((256 + re) >> (8 - d)) != ((256 + sym) >> (8 - d)):
                break
            ok = 1 if ((re >> (7 - d)) & 1) == ((sym >> (7 - d)) & 1) else 0
            c = rconf[rk, rc, 1]
            rconf[rk, rc, 0] += (ok * 65535 - rconf[rk, rc, 0]) * 2 // (2 * min(c, 1023) + 3)
            rconf[rk, rc, 0] = min(65535, max(1, rconf[rk, rc, 0]))
            rconf[rk, rc, 1] = c + 1
    rmask = runs.shape[0] - 1
    for k in range(len(ORDERS)):
        h = lane[b, L_HASH + k]
        i = (h >> 24) & rmask
        v = np.int64(runs[i])
        chk = (h >> 8) & 0xFFFF
        if (v >> 16) == chk and (v & 0xFF) == sym:
            runs[i] = (chk << 16) | (min(((v >> 8) & 0xFF) + 1, 255) << 8) | sym
        else:
            runs[i] = (chk << 16) | (1 << 8) | sym
    on_path = e >= 0
    rec = 3 if lane[b, L_RLEN] > 0 else 0
    ni = N_IN if rec else N_IN_TEXT
    nm = IN_WIDE if rec else ni  # the inputs of mixers 2, 3 and 4
    tt = lane[b, L_LEN]
    c2 = (np.int64(hist[b, tt - 2]) if tt >= 2 else 0) * 256 + c1
    c3 = (np.int64(hist[b, tt - 3]) if tt >= 3 else 0) << 16 | c2
    c4 = (np.int64(hist[b, tt - 4]) if tt >= 4 else 0) << 24 | c3
    bw1 = lane[b, L_W1]
    bw2 = lane[b, L_W2]
    bw3 = lane[b, L_W3]
    bmask = bm.shape[0] - BM_OFF[2] - 1
    ce0, ce1, cb0, cb1 = pend[b, P_CE0], pend[b, P_CE1], pend[b, P_CB0], pend[b, P_CB1]
    for d in range(8):
        n = (256 + sym) >> (8 - d)
        y = (sym >> (7 - d)) & 1
        # order 1
        i1 = c1 * 256 + n
        o1[i1] = _learn(np.int64(o1[i1]), y, COUNTER_LIMIT)
        pix = cb = cd = ce = 0
        if rec:
            ca, cb, cc = _bitmap_ctx(n, c1, bw1, bw2, bw3)
            cd, ce, cf = _bitmap_wide(n, c1, bw1, bw2, bw3)
            pix = ca
            bm[ca] = _learn(np.int64(bm[ca]), y, plim)
            i = BM_OFF[1] + cb
            bm[i] = _learn(np.int64(bm[i]), y, BITMAP_LIMIT)
            i = BM_OFF[2] + (cc & bmask)
            bm[i] = _learn(np.int64(bm[i]), y, BITMAP_LIMIT)
            if (params[1] & OFF_WIDE) == 0:
                for cw in (cd, ce, cf):
                    cw = BM_OFF[2] + (cw & bmask)
                    bm[cw] = _learn(np.int64(bm[cw]), y, BITMAP_LIMIT)
            i0 = cb0 + d * 3 + _pred_state(ce0, n, d)
            cpt[0, i0] = _learn(np.int64(cpt[0, i0]), y, COUNTER_LIMIT)
            i0 = cb1 + d * 3 + _pred_state(ce1, n, d)
            cpt[1, i0] = _learn(np.int64(cpt[1, i0]), y, COUNTER_LIMIT)
        # match confidence, while the byte so far agrees with the expected one
        if on_path:
            if ((256 + e) >> (8 - d)) == n:
                ok = 1 if ((e >> (7 - d)) & 1) == y else 0
                c = mconf[mi, 1]
                mconf[mi, 0] += (ok * 65535 - mconf[mi, 0]) * 2 // (2 * min(c, 255) + 3)
                mconf[mi, 0] = min(65535, max(1, mconf[mi, 0]))
                mconf[mi, 1] = c + 1
            else:
                on_path = False
        pm = np.int64(pmix[b, d])
        if pm == 0:  # below LAZY_MASS: no map, mixer or APM learns from the node
            continue
        for k in range(nk):  # the counter maps' knots used at mix time
            r = np.int64(smi[b, d, k])
            if r >= 0:
                smap[r] = _learn_sm(smap[r], y)
        # the five mixers, each toward the bit from its own output, then the final one
        two = (params[1] & OFF_MIXER2) == 0
        for m in range(N_MIX if two else 1):
            if m == 4 and params[1] & (OFF_PIXEL if rec else OFF_WORDMIX):  # no 5th mixer
                continue
            ws = w[wsel[b, 0, d]] if m == 0 else w2[wsel[b, m, d]]
            err = (y << 16) - np.int64(psub[b, m, d])
            cnt = ws[N_IN]
            err = (err * LR_DECAY[cnt]) >> 16
            ws[N_IN] = min(cnt + 1, LR_STEPS)
            for i in range(ni if m == 0 or m == 4 else nm):
                ws[i] += (np.int64(inputs[b, d, i]) * err) >> LR_SHIFT
        wn = wf[0 if ras else n]
        err = (y << 16) - pm
        cnt = wn[N_MIX]
        err = (err * LR_DECAY[cnt]) >> 16
        wn[N_MIX] = min(cnt + 1, LR_STEPS) if two else cnt
        if two:
            for m in range(N_MIX):
                wn[m] += (STRETCH[psub[b, m, d]] * err) >> FINAL_SHIFT
        # APMs: move the two knots around p toward the bit
        k1, f1 = _apm_idx(pm)
        k1 += 1 if 2 * f1 >= APM_STEP else 0  # the nearer knot
        r = n * N_MROW + _mrow(e, mlen, n, d, lane[b, L_MISS])
        a1[r, k1] = _learn_apm(a1[r, k1], y)
        r = _row16(cd, 11) if ras else n + (c1 << 8)
        a2[r, k1] = _learn_apm(a2[r, k1], y)
        kp, fp = _knot_of(np.int64(inputs[b, d, IN_PRIOR]))
        kp += 1 if 2 * fp >= APM_STEP else 0
        pmap[n, kp] = _learn_apm(pmap[n, kp], y)
        if not rec:
            r = 256 + (c1 << 8) + n
            pmap[r, kp] = _learn_apm(pmap[r, kp], y)
        if rec:
            r = _row16(cb, 1) if ras else n + (lane[b, L_U1] << 8)
            a3[r, k1] = _learn_apm(a3[r, k1], y)
        r = _row16(ce, 13) if ras else _apm4_row(c2, n)
        a4[r, k1] = _learn_apm(a4[r, k1], y)
        if not rec and (params[1] & OFF_APM34) == 0:
            r = _apm4_row(c3, n)
            a6[r, k1] = _learn_apm(a6[r, k1], y)
            r = _apm4_row(c4, n) + APM4_ROWS
            a6[r, k1] = _learn_apm(a6[r, k1], y)
        if rec and (params[1] & OFF_PIXEL) == 0:
            r = pix * 8 + (0 if ras else d)
            a5[r, k1] = _learn_apm(a5[r, k1], y)
    # history, match pointer, context hashes
    t = lane[b, L_LEN]
    hist[b, t] = sym
    lane[b, L_LEN] = t + 1
    lane[b, L_C1] = sym
    nlen = t + 1
    ml = lane[b, L_MLANE]
    if ml >= 0 and e == sym:
        lane[b, L_MPOS] += 1
        lane[b, L_MLEN] += 1
    elif ml >= 0 and lane[b, L_MLEN] >= RECOVER_LEN and (params[1] & OFF_RECOVER) == 0:
        # recovered: kept past the wrong byte
        lane[b, L_MPOS] += 1
        lane[b, L_MLEN] = 0
        lane[b, L_MISS] += 1
    else:
        lane[b, L_MLANE] = -1
        lane[b, L_MLEN] = 0
        lane[b, L_MISS] = 0
    if nlen >= MIN_MATCH:
        h = _ctx_hash(hist, b, nlen, MIN_MATCH)
        slot = (h >> 16) & (match.shape[0] - 1)
        if lane[b, L_MLANE] < 0:
            cand = match[slot]
            if cand >= 0:
                cl = cand // cap
                cp = cand - cl * cap
                if cp < lane[cl, L_LEN]:
                    k = 0
                    while (
                        k < MAX_LEN
                        and cp - 1 - k >= 0
                        and hist[cl, cp - 1 - k] == hist[b, nlen - 1 - k]
                    ):
                        k += 1
                    if k >= MIN_MATCH:
                        lane[b, L_MLANE] = cl
                        lane[b, L_MPOS] = cp
                        lane[b, L_MLEN] = k
                        lane[b, L_MISS] = 0
        match[slot] = b * cap + nlen
    for k in range(len(ORDERS)):
        lane[b, L_HASH + k] = _ctx_hash(hist, b, nlen, ORDERS[k])
    # word context: letters (case folded) since the last non-letter, with the order-1 byte
    wd = lane[b, L_WORD]
    lo = sym | 32
    if 97 <= lo <= 122:
        wd = (wd + lo + 1) * 0x3C6EF372FE94F82B
        wd ^= (wd >> 21) & 0x7FFFFFFFFFF
    else:
        if wd != 0:
            lane[b, L_PPW] = lane[b, L_PWORD]
            lane[b, L_PWORD] = wd
        wd = 0
    lane[b, L_WORD] = wd
    lane[b, L_HASH + H_WORD] = (wd + sym + 7) * 0x6A09E667F3BCC909
    tx = lane[b, L_TEXT]
    lane[b, L_TEXT] = tx - (tx >> 6) + (64 if BYTE_CLASS[sym] < 3 else 0)
    if lane[b, L_RLEN] > 0 and lane[b, L_TEXT] < TEXT_BINARY and (params[1] & OFF_SPARSE) == 0:
        q2 = np.int64(hist[b, nlen - 2]) if nlen >= 2 else 256
        q3 = np.int64(hist[b, nlen - 3]) if nlen >= 3 else 256
        q4 = np.int64(hist[b, nlen - 4]) if nlen >= 4 else 256
        sp = ((q2 << 20) + (q3 << 10) + q4 + 4) * 0x5DEECE66D1234567
        lane[b, L_HASH + H_WORD] = sp ^ ((sp >> 29) & 0x7FFFFFFFF)
    # record contexts: the bytes one and two records above, and the byte above with the
    # previous byte; without a record length, word contexts: the word before the last
    # with the current one (a skip-bigram), and the last three words (a trigram)
    rl = lane[b, L_RLEN]
    if rl > 0:
        up1 = np.int64(hist[b, nlen - rl]) if nlen >= rl else 256
        up2 = np.int64(hist[b, nlen - 2 * rl]) if nlen >= 2 * rl else 256
        ra = ((rl << 20) + (up1 << 10) + up2 + 1) * 0x5DEECE66D1234567
        rb = ((rl << 20) + (up1 << 10) + sym + 2) * 0x2F0B3A4E5D6C7B81
    else:
        w2b, w1b = lane[b, L_PPW], lane[b, L_PWORD]  # the words two back and one back
        ra = ((w2b + 0x1234567) * 0x9E3779B97F4A7C15 + wd + sym + 23) * 0x5DEECE66D1234567
        rb = (w2b * 0x2545F4914F6CDD1D + w1b) * 0x9E3779B97F4A7C15 + wd + sym + 21
        rb *= 0x6C62272E07BB0142
    lane[b, L_HASH + len(ORDERS) + 1] = ra ^ ((ra >> 29) & 0x7FFFFFFFF)
    lane[b, L_HASH + len(ORDERS) + 2] = rb ^ ((rb >> 29) & 0x7FFFFFFFF)
    if rl > 0:
        # indirect (version 11: tables -0.5 to -1 %, executables -0.4 % with a flat prior)
        follow[c2] = ((follow[c2] << 8) | sym) & 0xFFFF
        c2n = (c1 << 8) | sym
        ih = ((c2n << 16) + follow[c2n] + 3) * 0x7A3C5E9B1D2F4861
        lane[b, L_HASH + H_INDIRECT] = ih ^ ((ih >> 29) & 0x7FFFFFFFF)
        ur = np.int64(hist[b, nlen - rl + 1]) if nlen >= rl - 1 and rl > 1 else 256
        lane[b, L_U1] = up1 & 255
        eb = ((up1 << 20) + (ur << 10) + sym + 6) * 0x3E5B7C9D1F2A4B6D
        lane[b, L_HASH + H_BIGRAM] = ORDER0_HASH  # 0 before the lane's first byte
        lane[b, L_HASH + H_BIGRAM + 1] = eb ^ ((eb >> 29) & 0x7FFFFFFFF)
        lane[b, L_W1] = _window(hist, b, nlen - rl, nlen)
        lane[b, L_W2] = _window(hist, b, nlen - 2 * rl, nlen)
        lane[b, L_W3] = _window(hist, b, nlen - 3 * rl, nlen)
    else:
        bg = (lane[b, L_PWORD] * 0x2545F4914F6CDD1D + wd + sym + 13) * 0x6C62272E07BB0142
        lane[b, L_HASH + H_BIGRAM] = bg ^ ((bg >> 29) & 0x7FFFFFFFF)
        if sym == 10:
            lane[b, L_PNL] = lane[b, L_NL]
            lane[b, L_NL] = nlen
        col = nlen - lane[b, L_NL]
        ab = lane[b, L_PNL] + col
        above = np.int64(hist[b, ab]) if ab < lane[b, L_NL] else 256
        cx = ((above << 10) + sym + 17) * 0x3E5B7C9D1F2A4B6D
        cx ^= (cx >> 29) & 0x7FFFFFFFF
        lane[b, L_HASH + H_BIGRAM + 1] = cx if above < 256 else 0  # 0: no context


@_jit
def _window(hist, b, i, t):
    """The bytes i - 1, i, i + 1 of lane b (those outside 0..t - 1 as 0), 24 bits."""
    v = np.int64(0)
    for j in range(i - 1, i + 2):
        v = (v << 8) | (np.int64(hist[b, j]) if 0 <= j < t else 0)
    return v


# The per-lane kernels take the block's state as one tuple st (LaneModels.arrays()) and
# unpack it by name (numba inlines no call with *args; inlined, the tuple costs nothing).
@_jit
def _begin_lanes(counts, active, lo, st):
    for i in range(counts.shape[0]):
        if active[i]:
            _prefetch_begin(lo + i, st)
    for i in range(counts.shape[0]):
        if active[i]:
            _begin_one(counts[i], lo + i, st)


@_jit
def _node_tables(nodes, bits, active, table, st):
    i = 0
    for b in range(nodes.shape[0]):
        if active[b]:
            if bits.shape[0]:  # the child the last decision chose
                nodes[b] = 2 * nodes[b] + bits[i]
            p = _node_one(nodes[b], b, st)
            table[i, 0] = 65536 - p
            table[i, 1] = p
            i += 1


@_jit
def _update_step(symbols, active, st):
    for b in range(symbols.shape[0]):
        if active[b]:
            _update_one(np.int64(symbols[b]), b, st)


@_jit
def _encode_chunk(counts, symbols, active, out, st):
    B, C = symbols.shape
    for c in range(C):  # lockstep: predict every lane at c, then learn in lane order
        for b in range(B):
            if active[b, c]:
                _prefetch_begin(b, st)
                for d in range(8):
                    _prefetch_node((256 + symbols[b, c]) >> (8 - d), b, st)
        for b in range(B):
            if active[b, c]:
                _begin_one(counts[b, c], b, st)
                sym = symbols[b, c]
                for d in range(8):
                    n = (256 + sym) >> (8 - d)
                    out[b, c, d] = _node_one(n, b, st)
        for b in range(B):
            if active[b, c]:
                _update_one(np.int64(symbols[b, c]), b, st)


def begin(models: LaneModels, counts: np.ndarray, active: np.ndarray, lo: int = 0) -> None:
    """Decoder side: start the next byte of the lanes lo .. lo + n - 1 from their prior
    counts (n, 256) (active: (n,) bool). Reads the shared state and writes only these
    lanes', so threads may begin disjoint lane ranges at once (the kernel releases the
    GIL). Then predict() each of the byte's 8 binary decisions, then update()."""
    _begin_lanes(counts, active, np.int64(lo), models.arrays())


def predict(models: LaneModels, nodes: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Decoder side: p(bit = 1) in 1/65536 (B,) int64 of node nodes[b] of every active
    lane (0 for the others): the root 1 first, then 2n + bit down the byte's path."""
    table = np.empty((int(np.count_nonzero(active)), 2), np.float64)
    predict_table(models, nodes, np.zeros(0, np.int64), active, table)
    out = np.zeros(nodes.shape[0], np.int64)
    out[active] = table[:, 1]
    return out


def predict_table(models, nodes, bits, active, table) -> None:
    """Decoder side, predict() as a binary coder's table: with bits (the last decisions
    of the m active lanes, in lane order; empty at the root) each active lane's node
    first moves to its child (nodes (B,) int64, in place), then row i of `table` (m, 2)
    float64 becomes (65536 - p, p) of the i-th active lane's node."""
    _node_tables(nodes, bits, active, table, models.arrays())


def update(models: LaneModels, symbols: np.ndarray, active: np.ndarray) -> None:
    """Decoder side: feed the bytes just decoded (B,) for the active lanes."""
    _update_step(symbols, active, models.arrays())


def mix_chunk(models: LaneModels, counts: np.ndarray, symbols: np.ndarray, active: np.ndarray):
    """Encoder side: for a chunk of C positions whose bytes are known (B, C), from their
    prior counts (B, C, 256), the probabilities (B, C, 8) int64 that code them: p(bit = 1)
    in 1/65536 of each of the byte's 8 binary decisions, most significant first (0 at
    inactive positions); predicting and learning position by position exactly as the
    decoder does."""
    out = np.zeros((*symbols.shape, 8), np.int64)
    _encode_chunk(counts, symbols, active, out, models.arrays())
    return out


# ---- stage streams: the stage alone on one segment, without the model ----------------
# A segment can be coded by the stage alone: one lane, a flat prior (every byte
# COUNT_TOTAL / 256) and a binary arithmetic coder compiled with it, so each byte is one
# compiled loop (no model, no Python call per decision). The stream: the record length
# (a varint, record_head), then the coder's bytes. The coder keeps a 32-bit interval
# [x1, x2]; a decision with p(bit = 1) = p / 65536 splits it at
# xmid = x1 + (r >> 16) * p + ((r & 0xFFFF) * p >> 16), r = x2 - x1: bit 1 keeps
# [x1, xmid], bit 0 [xmid + 1, x2]; while x1 and x2 share their top byte it is written
# and both shift left by 8 (x2 filling with ones). The encoder ends with x1's top byte;
# the decoder reads 0xFF beyond the end of the stream.
FLAT_COUNT = COUNT_TOTAL // 256


def record_head(record: int) -> bytes:
    """The head of a model or stage stream: the record length 0..RECORD_LIMIT as an
    unsigned LEB128 varint, the container's (1 to 3 bytes; version 9 wrote a u32)."""
    from .container import varint  # container imports this module only lazily

    return varint(record)


def read_record_head(stream: bytes) -> tuple[int, int]:
    """(record length, bytes of the head) of a stream that starts with record_head and
    has at least one code byte after it. Raises ValueError otherwise, or where the varint
    is not the shortest or the length is above RECORD_LIMIT."""
    record = 0
    for i in range(3):
        if i >= len(stream) - 1:
            break
        record |= (stream[i] & 0x7F) << (7 * i)
        if not stream[i] & 0x80:
            if (i and stream[i] == 0) or record > RECORD_LIMIT:
                break
            return record, i + 1
    raise ValueError("no valid record length")


@_inline
def _split(x1, x2, p):
    r = x2 - x1
    return x1 + (r >> 16) * p + (((r & 0xFFFF) * p) >> 16)


@_inline
def _encode_bit(x1, x2, p, y, out, k):
    """The coder's interval [x1, x2] after coding bit y with p(bit = 1) = p / 65536, the
    bytes it shifts out written to out from k on: (x1, x2, k)."""
    xmid = _split(x1, x2, p)
    if y:
        x2 = xmid
    else:
        x1 = xmid + 1
    while ((x1 ^ x2) >> 24) == 0:
        out[k] = x2 >> 24
        k += 1
        x1 = (x1 << 8) & 0xFFFFFFFF
        x2 = ((x2 << 8) & 0xFFFFFFFF) | 255
    return x1, x2, k


@_inline
def _decode_bit(x1, x2, x, pos, p, stream):
    """The bit that code value x holds under p(bit = 1) = p / 65536 in [x1, x2], and the
    coder after it, reading stream from pos on (0xFF beyond its end): (bit, x1, x2, x,
    pos)."""
    xmid = _split(x1, x2, p)
    bit = 1 if x <= xmid else 0
    if bit:
        x2 = xmid
    else:
        x1 = xmid + 1
    while ((x1 ^ x2) >> 24) == 0:
        x1 = (x1 << 8) & 0xFFFFFFFF
        x2 = ((x2 << 8) & 0xFFFFFFFF) | 255
        x = ((x << 8) & 0xFFFFFFFF) | (np.int64(stream[pos]) if pos < stream.shape[0] else 255)
        pos += 1
    return bit, x1, x2, x, pos


@_jit
def _encode_lane(data, out, checks, limits, st, k0):
    """Code data (n,) uint8 as lane 0 of the fresh state st into out (at least 2n + 16
    bytes, after a head of k0 bytes); returns (the stream length (head included), -1),
    or, as soon as the output reaches limits[j] bytes at position checks[j] (increasing),
    (the output's length then, j)."""
    counts = np.full(256, FLAT_COUNT, np.int64)
    x1 = np.int64(0)
    x2 = np.int64(0xFFFFFFFF)
    k = k0
    j = 0
    for t in range(data.shape[0]):
        if j < checks.shape[0] and t == checks[j]:
            if k >= limits[j]:
                return k, j
            j += 1
        _begin_one(counts, 0, st)
        sym = np.int64(data[t])
        for d in range(8):
            n = (256 + sym) >> (8 - d)
            p = _node_one(n, 0, st)
            x1, x2, k = _encode_bit(x1, x2, p, (sym >> (7 - d)) & 1, out, k)
        _update_one(sym, 0, st)
    out[k] = x1 >> 24
    return k + 1, -1


@_jit
def _decode_lane(stream, out, st):
    """Decode out.shape[0] bytes of lane 0 of the fresh state st from stream (its coder
    bytes, after the head) into out."""
    counts = np.full(256, FLAT_COUNT, np.int64)
    x1 = np.int64(0)
    x2 = np.int64(0xFFFFFFFF)
    x = np.int64(0)
    m = stream.shape[0]
    pos = 0
    for _ in range(4):
        x = (x << 8) | (np.int64(stream[pos]) if pos < m else 255)
        pos += 1
    for t in range(out.shape[0]):
        _begin_one(counts, 0, st)
        n = 1
        for _d in range(8):
            p = _node_one(n, 0, st)
            bit, x1, x2, x, pos = _decode_bit(x1, x2, x, pos, p, stream)
            n = 2 * n + bit
        out[t] = n - 256
        _update_one(n - 256, 0, st)


# ---- the same coder for a block's lanes after the model -------------------------------
# With the adaptive stage, a model block's decisions are coded by the same arithmetic
# coder, in the block's order: at each position, depth by depth, the active lanes in lane
# order. Encoder and decoder keep the coder's state between calls in a small array.


@_jit
def _encode_paths(probs, symbols, active, coder, out, k):
    """Code the decisions of a chunk (probs (B, C, 8) from mix_chunk, symbols (B, C),
    active (B, C)) position by position, depth by depth, lane by lane, into out from
    byte k on (room for 2 bytes a decision and 8 more); coder = [x1, x2] in and out.
    Returns the new k."""
    B, C = symbols.shape
    x1, x2 = coder[0], coder[1]
    for c in range(C):
        for d in range(8):
            for b in range(B):
                if active[b, c]:
                    y = (symbols[b, c] >> (7 - d)) & 1
                    x1, x2, k = _encode_bit(x1, x2, probs[b, c, d], y, out, k)
    coder[0], coder[1] = x1, x2
    return k


@_jit
def _decode_paths(active, coder, stream, symbols, st):
    """The next byte of every active lane (after _begin_one of each) into symbols (B,)
    uint8: its 8 decisions, depth by depth, lane by lane, decoded from stream with
    coder = [x1, x2, x, position in stream] in and out (0xFF read beyond the end)."""
    x1, x2, x, pos = coder[0], coder[1], coder[2], coder[3]
    B = active.shape[0]
    nodes = np.ones(B, np.int64)
    for _d in range(8):
        for b in range(B):
            if active[b]:
                _prefetch_node(nodes[b], b, st)
        for b in range(B):
            if active[b]:
                p = _node_one(nodes[b], b, st)
                bit, x1, x2, x, pos = _decode_bit(x1, x2, x, pos, p, stream)
                nodes[b] = 2 * nodes[b] + bit
    for b in range(B):
        symbols[b] = nodes[b] - 256 if active[b] else 0
    coder[0], coder[1], coder[2], coder[3] = x1, x2, x, pos


class PathEncoder:
    """The arithmetic coder of a model block's decisions, as a growing stream:
    encode(probs, symbols, active) for chunk after chunk (mix_chunk's output), then
    finish() -> the code (bytes)."""

    def __init__(self):
        self.coder = np.array([0, 0xFFFFFFFF], np.int64)
        self.out = np.zeros(1 << 12, np.uint8)
        self.k = 0

    def encode(self, probs: np.ndarray, symbols: np.ndarray, active: np.ndarray) -> None:
        need = self.k + 16 * int(np.count_nonzero(active)) + 8  # <= 2 bytes a decision
        if need > len(self.out):
            self.out = np.concatenate([self.out, np.zeros(need, np.uint8)])
        self.k = _encode_paths(probs, symbols, active, self.coder, self.out, self.k)

    def finish(self) -> bytes:
        return self.out[: self.k].tobytes() + bytes([int(self.coder[0]) >> 24])


class PathDecoder:
    """The decoder of PathEncoder's code: decode(models, active) -> the next byte (B,)
    uint8 of every active lane (0 for the others), after begin() of each; then update()."""

    def __init__(self, code: bytes):
        self.stream = np.frombuffer(code, np.uint8)
        head = (code[:4] + b"\xff" * 4)[:4]
        self.coder = np.array([0, 0xFFFFFFFF, int.from_bytes(head, "big"), 4], np.int64)

    def decode(self, models: LaneModels, active: np.ndarray) -> np.ndarray:
        out = np.zeros(active.shape[0], np.uint8)
        _decode_paths(active, self.coder, self.stream, out, models.arrays())
        return out


def encode_stage(
    data: bytes, limits: tuple[tuple[int, int], ...] = (), gave_up: list | None = None
) -> bytes | None:
    """The stage stream of `data` (the stage alone, flat prior, one lane; record length
    from choose_record), or None once it reaches `limit` bytes at position `pos` for any
    (pos, limit) in `limits` (positions increasing: an encoder giving up early); then
    (pos, the stream's bytes at pos) is appended to `gave_up` if given."""
    n = len(data)
    record = choose_record([data]) if n else 0
    models = LaneModels(1, n, record)
    head = record_head(record)
    out = np.zeros(2 * n + 16, np.uint8)
    checks = np.array([p for p, _ in limits], np.int64)
    caps = np.array([c for _, c in limits], np.int64)
    k, j = _encode_lane(
        np.frombuffer(data, np.uint8), out, checks, caps, models.arrays(), len(head)
    )
    if j >= 0:
        if gave_up is not None:
            gave_up.append((limits[j][0], k))
        return None
    return head + out[len(head) : k].tobytes()


def decode_stage(stream: bytes, length: int) -> bytes:
    """The `length` bytes coded in the stage stream `stream`. Raises ValueError for a
    stream no encoder wrote where that shows (no head, record length out of range); any
    other damage decodes to wrong bytes, which the container's CRC catches."""
    try:
        record, k = read_record_head(stream)
    except ValueError:
        raise ValueError("corrupt stage stream: no valid record length") from None
    models = LaneModels(1, length, record)
    out = np.zeros(length, np.uint8)
    _decode_lane(np.frombuffer(stream, np.uint8)[k:], out, models.arrays())
    return out.tobytes()


def path_bits(probs: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """-log2 p(symbol) (...) float64 of bytes `symbols` (...) under their path
    probabilities `probs` (..., 8) from mix_chunk (accounting only, never coding)."""
    y = (np.asarray(symbols, np.int64)[..., None] >> np.arange(7, -1, -1)) & 1
    p = np.where(y == 1, probs, 65536 - probs)
    return (16.0 - np.log2(np.maximum(p, 1).astype(np.float64))).sum(-1)


@_jit
def _record_scores(data, rmax, windows, width):
    """sc[r]: in `windows` evenly spaced windows of `width` bytes, how often a byte that
    differs from its predecessor equals the byte r before it (r = 2..rmax)."""
    n = data.shape[0]
    sc = np.zeros(rmax + 1, np.int64)
    for w in range(windows):
        start = (n - width) * w // max(windows - 1, 1)
        for i in range(max(start, 1), start + width):
            v = data[i]
            if v == data[i - 1]:
                continue
            for r in range(2, min(rmax, i) + 1):
                if data[i - r] == v:
                    sc[r] += 1
    return sc


def choose_record(segments: list[bytes]) -> int:
    """Encoder side: the record length to signal for a block whose lanes are `segments`
    (0: none). The distance r at which bytes recur most (beyond runs) wins if it recurs
    at least 1.5 times as often as the median distance; the smallest r that recurs at
    least 7/8 as often as the winner is chosen (multiples of the true length score nearly
    as high). Integer arithmetic only: the same input always gives the same r."""
    data = np.frombuffer(b"".join(segments), np.uint8)
    n = data.shape[0]
    rmax = min(MAX_RECORD, n // 8)
    if rmax < 16:
        return 0
    width = min(n, max(1 << 14, RECORD_WORK // rmax))
    windows = 1 if width == n else 16  # spread out: a file's start may not be typical
    width //= windows
    sc = _record_scores(data, rmax, windows, width)[2:]
    best = int(sc.max())
    med = int(np.sort(sc)[len(sc) // 2])
    if best < 32 or 2 * best < 3 * med:
        return 0
    return int(np.flatnonzero(8 * sc >= 7 * best)[0]) + 2
