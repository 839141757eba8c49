"""Density evaluation: bits per byte of a model on files and datasets, teacher-forced.

Each document is scored as one stream from its first byte: the global model runs in chunks
of CHUNK_PATCHES patches with its key/value cache, so every byte sees the model's full
context (the W patches before it), exactly as `Megabyte.stream_logits` and the coder do.
A document whose length is not a multiple of P is padded with zeros; padding bytes are not
scored.

The streaming scorer (`float_scores`) reads each document piece by piece and keeps only
one chunk's logits and the KV caches, so memory does not grow with a document's length.
Its bits are *exactly* those of `float_bits`, the one-shot definition (the whole logits
tensor and F.cross_entropy(reduction="sum")): the float32 log-probabilities are the same
numbers, and `NllSum` adds them in the order and grouping torch's CPU cross-entropy uses.

Documents are scored together as lanes of one batch. A batch only ever holds lanes whose
tensors have the same shape (same chunk length and cache length; documents are never
padded to each other), so on the CPU a document's bits do not depend on its batch-mates
or the batch size: batched and one-at-a-time results are identical (tested). On CUDA,
float GEMMs depend on the batch shape and final chunks may be padded (`bucket`) to batch
better, so there results agree with the CPU's only to float rounding (bfloat16 on the CPU pads
final chunks too, CPU_BF16_BUCKET, with the bits unchanged). `lanes` > 1 splits
each document into that many segments scored as independent streams: each restarts
without context, which changes (raises) the result; reports say so.

On the CPU the work runs on worker threads (`threads`, default: the cores), each with one
torch thread, in pieces of whole lanes (global pass) and whole patches (local pass) sized
for the caches; a lane's global pass runs ahead of its local passes. Every piece sees the
GEMM shapes the one-shot pass gives its rows, so the bits do not depend on the thread
count (tested). `dtype="bfloat16"` on the CPU scores a bfloat16 copy of the model
(`bf16_model`): about 2.5x the speed where the CPU has AVX512-BF16, numbers within ~0.1 %.

With the integer model (`score_documents(int_model=...)`), each document is read and
scored one segment at a time, segments of at most INT_SEGMENT bytes (`int_segments`),
each exactly as the encoder codes one segment (`int_code_lengths`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numba as nb
import numpy as np
import torch
import torch.nn.functional as F

from .data import list_files
from .model import CausalSelfAttention, Megabyte, RMSNorm, alibi_slopes, attention_bias

LN2 = math.log(2)


@dataclass
class FileScore:
    path: str
    bytes: int
    bits: float  # ideal code length: sum of -log2 p(byte)
    kind: str = ""

    @property
    def bits_per_byte(self) -> float:
        return self.bits / self.bytes if self.bytes else 0.0


def pad_to_patches(data: bytes, patch_size: int) -> torch.Tensor:
    """(1, T) int64 tensor of `data`, zero-padded to a multiple of patch_size."""
    n = len(data)
    t = torch.zeros(1, -(-max(n, 1) // patch_size) * patch_size, dtype=torch.long)
    t[0, :n] = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    return t


@torch.no_grad()
def float_bits(model: Megabyte, data: bytes, device="cpu") -> float:
    """Ideal code length of `data` in bits under the float model (sum of -log2 p)."""
    if not data:
        return 0.0
    x = pad_to_patches(data, model.config.patch_size).to(device)
    logits = model.stream_logits(x)[0, : len(data)].float()
    return F.cross_entropy(logits, x[0, : len(data)], reduction="sum").item() / LN2


CHUNK_PATCHES = 256  # patches per global step, as Megabyte.stream_logits (part of the result)
# Chunks shorter than this run alone: CPU GEMMs of fewer than 12 rows round differently
# from the same rows in a larger GEMM (measured), so a short chunk's result would depend on
# its batch-mates. From 12 rows up, a row's result did not depend on the row count.
MIN_BATCH_PATCHES = 16
_LEVELS = 8  # levels of torch's cascaded sum in the CPU nll_loss

_jit = nb.njit(cache=True, nogil=True)


@_jit
def _cascade_add(logp, partial, start, power):  # pragma: no cover - compiled
    mask = (1 << power) - 1
    for i in range(logp.shape[0]):
        b = start + i
        partial[0] -= logp[i]
        for j in range(_LEVELS - 1):
            if b & (mask << (j * power)):
                break
            partial[j + 1] += partial[j]
            partial[j] = 0


class NllSum:
    """The float32 sum of -log p over the n positions of one document, fed in pieces, with
    the result of torch's CPU `nll_loss(reduction="sum")` over all n at once, bit for bit:
    that kernel adds into 8 levels of partial sums, level j flushed into level j + 1 after
    position b when b is a multiple of 2^(power (j + 1)), power = max(4, ceil(log2 n) // 8),
    and sums the levels last. Only the total length n needs to be known in advance."""

    def __init__(self, n: int):
        self.power = max(4, (n - 1).bit_length() // _LEVELS) if n > 1 else 4
        self.partial = np.zeros(_LEVELS, np.float32)
        self.count = 0

    def add(self, logp: np.ndarray) -> None:
        """Add the float32 log-probabilities of the next positions."""
        _cascade_add(np.ascontiguousarray(logp, np.float32), self.partial, self.count, self.power)
        self.count += len(logp)

    def total(self) -> float:
        acc = np.float32(0.0)
        for p in self.partial:
            acc = np.float32(acc + p)
        return float(acc)


@dataclass
class _Lane:
    """One segment in flight: its reader, its progress and its KV caches."""

    key: tuple[int, int]  # (document number, segment number)
    reader: object
    size: int  # bytes
    patches: int
    acc: NllSum
    done: int = 0  # patches through the global model
    queued: int = 0  # steps whose local pass is not yet added to acc
    last: torch.Tensor | None = None  # the last patch of the previous chunk (P,)
    caches: list | None = None  # per global layer (k, v), each (1, H, S, hd)

    def signature(self, bucket: int, pad_short: bool = True) -> tuple:
        """Lanes with equal signatures run as one batch: (first chunk, cache length, chunk
        patches, and the lane itself for a short chunk that must run alone). A final chunk
        is padded to a multiple of `bucket` patches, one of fewer than MIN_BATCH_PATCHES
        only if pad_short."""
        n = min(CHUNK_PATCHES, self.patches - self.done)
        if n < CHUNK_PATCHES and bucket > 1 and (pad_short or n >= MIN_BATCH_PATCHES):
            n = min(-(-n // bucket) * bucket, CHUNK_PATCHES)
        alone = self.key if n < MIN_BATCH_PATCHES else None
        return self.done == 0, 0 if self.caches is None else self.caches[0][0].shape[2], n, alone


def segment_bounds(size: int, lanes: int, patch_size: int) -> list[tuple[int, int]]:
    """(offset, length) of the segments a document of `size` bytes is split into when
    scored as `lanes` lanes: equal lengths, a multiple of P, the last one shorter."""
    if lanes <= 1 or size == 0:
        return [(0, size)]
    per_lane = -(-size // lanes)
    step = -(-per_lane // patch_size) * patch_size
    return [(o, min(step, size - o)) for o in range(0, size, step)]


def _read_exact(f, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = f.read(n - len(out))
        if not piece:
            raise ValueError(f"{getattr(f, 'name', 'input')}: shorter than announced")
        out += piece
    return bytes(out)


# Work is cut into pieces that fit the CPU's caches: tensors of tens of MB (a batch of 16
# lanes x 256 patches x 8 bytes x the local MLP's 512) made elementwise ops ~10x slower
# than on 1 MB ones here, mostly page faults and memory traffic. The pieces are whole
# lanes (global pass) and whole patches (local pass), of at least MIN_BATCH_PATCHES
# patches, so every row sees the GEMM shapes the one-shot pass gives it: same bits.
GLOBAL_PATCHES = 512  # patches (rows of the global GEMMs) per global piece, at most
LOCAL_PATCHES = 256  # patches per local piece, at least (the last piece takes the rest):
# 256 (2,048 rows, a few MB of activations) scored bfloat16 documents 7-20 % faster per CPU
# second than 64 here, the same bits


def _local_pieces(rows: int) -> list[tuple[int, int]]:
    """(start, stop) of the local pieces of `rows` patches: LOCAL_PATCHES each, the last
    one also taking the remainder (so no piece is shorter than LOCAL_PATCHES unless the
    whole is)."""
    cuts = list(range(0, rows, LOCAL_PATCHES))
    if not cuts:
        return []
    if len(cuts) > 1 and rows - cuts[-1] < LOCAL_PATCHES:
        cuts.pop()
    return [(a, b) for a, b in zip(cuts, cuts[1:] + [rows], strict=True)]


class _Workers:
    """A few threads that run torch work (which releases the GIL), global pieces before
    local ones. Each thread runs torch with one intra-op thread: parallel work comes from
    these threads, with no OpenMP barriers, which on a shared machine (others' processes on
    the same cores) made two intra-op threads several times slower than one."""

    def __init__(self, n: int):
        import queue
        import threading

        self.q: queue.PriorityQueue = queue.PriorityQueue()
        self.seq = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self):
        torch.set_num_threads(1)
        with torch.no_grad():
            while True:
                _, _, fn, fut = self.q.get()
                if fn is None:
                    return
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as e:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(e)

    def submit(self, priority: int, fn):
        from concurrent.futures import Future

        fut = Future()
        self.seq += 1
        self.q.put((priority, self.seq, fn, fut))
        return fut

    def close(self):
        for _ in self.threads:
            self.q.put((99, 1 << 62, None, None))
        for t in self.threads:
            t.join()


class _Inline:
    """_Workers' interface, running each piece at once in the caller (CUDA, or threads=0)."""

    def submit(self, priority: int, fn):
        from concurrent.futures import Future

        fut = Future()
        fut.set_result(fn())
        return fut

    def close(self):
        pass


def _global_piece(model, inp, first: bool, caches, autocast):
    """The global pass of some lanes: (context (b, n, P, L), their new caches)."""
    c = model.new_caches()
    if caches is not None:
        for i, cache in enumerate(c):
            cache.k, cache.v = caches[i]
    with autocast():
        ctx = model.global_context(inp, c, first=first)
    return ctx, [(cache.k, cache.v) for cache in c]


def _local_piece(model, chunk, ctx, autocast) -> np.ndarray:
    """float32 log p of each byte of `chunk` (m, P) given its context (m, P, L): (m * P,)."""
    with autocast():
        logits = model.local_logits(chunk[None], ctx[None])
    logp = F.log_softmax(logits.float().reshape(-1, 256), dim=1)
    return logp.gather(1, chunk.reshape(-1, 1)).view(-1).cpu().numpy()


@dataclass
class _Step:
    """A chunk of some lanes whose local pass is in the workers' hands."""

    group: list[_Lane]
    valid: list[int]  # bytes of each lane's chunk that are scored
    width: int  # bytes of each lane's chunk (n * P)
    pieces: list  # futures of the local pieces, in order


@torch.no_grad()
def _global_step(model, group: list[_Lane], n: int, first: bool, device, autocast, pool):
    """Run the global pass of the next chunk (n patches, zero-padded) of every lane in
    `group` (all of the same signature), update the lanes' caches, and hand the local pass
    to the pool. Returns the _Step."""
    P = model.config.patch_size
    G = len(group)
    buf = np.zeros((G, n * P), np.uint8)
    valid = []
    for j, lane in enumerate(group):
        v = min(n * P, lane.size - lane.done * P)
        buf[j, :v] = np.frombuffer(_read_exact(lane.reader, v), np.uint8)
        valid.append(v)
    chunk = torch.from_numpy(buf).long().view(G, n, P).to(device)
    if first:
        inp = chunk
    else:
        prev = torch.stack([lane.last for lane in group])[:, None]
        inp = torch.cat([prev, chunk[:, :-1]], dim=1)
    cpu = torch.device(device).type == "cpu"  # on a GPU, pieces would only cost launches
    per = max(1, GLOBAL_PATCHES // n) if cpu else G  # lanes per global piece
    jobs = []
    for a in range(0, G, per):
        lanes = group[a : a + per]
        caches = None
        if not first:
            caches = [
                (
                    torch.cat([lane.caches[i][0] for lane in lanes]),
                    torch.cat([lane.caches[i][1] for lane in lanes]),
                )
                for i in range(len(lanes[0].caches))
            ]
        piece = inp[a : a + per]
        jobs.append(
            pool.submit(0, lambda p=piece, c=caches: _global_piece(model, p, first, c, autocast))
        )
    ctxs = []
    for a, job in zip(range(0, G, per), jobs, strict=True):
        ctx, caches = job.result()
        ctxs.append(ctx)
        for j, lane in enumerate(group[a : a + per]):
            real = -(-valid[a + j] // P)
            lane.done += real
            lane.queued += 1
            lane.last = chunk[a + j, real - 1]
            lane.caches = [(k[j : j + 1], v[j : j + 1]) for k, v in caches]
    ctx = torch.cat(ctxs) if len(ctxs) > 1 else ctxs[0]
    flat_chunk = chunk.reshape(G * n, P)
    flat_ctx = ctx.reshape(G * n, P, -1)
    pieces = [
        pool.submit(
            1, lambda a=a, b=b: _local_piece(model, flat_chunk[a:b], flat_ctx[a:b], autocast)
        )
        for a, b in (_local_pieces(G * n) if cpu else [(0, G * n)])
    ]
    return _Step(group, valid, n * P, pieces)


def _autocast(device, dtype):
    dev = torch.device(device)
    if dtype in (None, torch.float32, "float32") or _cpu_bf16(device, dtype):
        return lambda: torch.autocast(dev.type, enabled=False)
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return lambda: torch.autocast(dev.type, dtype=dt)


def _cpu_bf16(device, dtype) -> bool:
    return torch.device(device).type == "cpu" and dtype in (torch.bfloat16, "bfloat16")


QUERY_BLOCK = 64  # global attention: query rows per block (see _MatmulAttention)
_ALIGN = 16  # float32 lanes of the widest CPU vector (AVX-512); key bands start on them


class _MatmulAttention(CausalSelfAttention):
    """The same attention computed with two batched matmuls and a float32 softmax: on the
    CPU in bfloat16, scaled_dot_product_attention took 3-4x longer than this for the local
    model's 8 x 8 problems and the global model's chunks (measured here), and was most of
    the time once the linear layers ran in bfloat16. Used only for --dtype bfloat16 on the
    CPU (float32 keeps the model's own attention, so its numbers do not change).

    With a window (the global model), queries run in blocks of QUERY_BLOCK rows against
    only the keys the block can see (a chunk of 256 patches after a cache of 127 sees 383
    keys, a block of 64 rows 191 of them), the band starting on a multiple of _ALIGN keys:
    smaller tensors (they stay in the cache) and less work. The keys left out have
    probability exactly 0, and the softmax's vectorised sums and the bfloat16 GEMMs add
    the others in the same lanes and order, so the numbers are those of whole rows, bit
    for bit (tested against the unbanded computation)."""

    def forward(self, x, cache=None):
        B, T, C = x.shape
        H, hd = self.n_heads, C // self.n_heads
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, H, S, hd)
        S = k.shape[2]
        bias = self.biases.get((T, S))
        if bias is None:
            if len(self.biases) > 32:
                self.biases.clear()
            bias = self.biases[(T, S)] = attention_bias(self.slopes, T, S, self.window)
        y = x.new_empty(B, T, H, hd)
        step = QUERY_BLOCK if self.window is not None else T
        for a in range(0, T, step):
            b = min(a + step, T)
            lo, hi = 0, S  # keys visible to queries a..b-1 (positions S - T + a ...)
            if self.window is not None:
                lo = max(0, S - T + a - self.window + 1) // _ALIGN * _ALIGN
                hi = S - T + b
                if hi - lo < _ALIGN:  # a short row reduces in another order: keep it whole
                    lo, hi = 0, S
            s = torch.matmul(q[:, :, a:b], k[:, :, lo:hi].transpose(-1, -2)).float()
            s.mul_(hd**-0.5).add_(bias[:, a:b, lo:hi])  # (B, H, b - a, hi - lo)
            p = s.softmax(-1).to(v.dtype)
            y[:, a:b] = torch.matmul(p, v[:, :, lo:hi]).transpose(1, 2)
        return self.proj(y.view(B, T, C))


class _FusedRMSNorm(RMSNorm):
    """RMSNorm by torch's fused kernel (F.rms_norm) on the float32 values: the same
    numbers as RMSNorm.forward (the same float32 operations: checked on the shipped model's
    activations), in half the time on the CPU, where the norms' separate elementwise
    passes and dtype copies were a fifth of bfloat16 scoring."""

    def forward(self, x):
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(x.dtype)


def bf16_model(model: Megabyte) -> Megabyte:
    """A bfloat16 copy of `model` for scoring on the CPU: weights in bfloat16 (norms and
    softmax still compute in float32), attention by _MatmulAttention. Its numbers are
    close to the float32 model's, not equal (bench/results/density.md compares them)."""
    import copy as copying

    copy = copying.deepcopy(model).to(torch.bfloat16).eval()
    for module in copy.modules():
        if isinstance(module, RMSNorm):
            module.__class__ = _FusedRMSNorm
        if isinstance(module, CausalSelfAttention):
            module.__class__ = _MatmulAttention
            module.biases = {}
            module.slopes = torch.tensor(alibi_slopes(module.n_heads), device=module.slopes.device)
    return copy


def default_threads(device) -> int:
    """Worker threads of float_scores: the CPU cores this process may use; 0 (run in the
    caller) on CUDA."""
    if torch.device(device).type != "cpu":
        return 0
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


PENDING_STEPS = 4  # chunks whose local pass may wait for the workers (bounds memory)
# bfloat16 on the CPU pads final chunks of MIN_BATCH_PATCHES or more to a multiple of this:
# each GEMM shape is a oneDNN primitive, made (~1 ms) on first use and kept in a cache of
# 1,024; final chunks of every length 1-255, and their local pieces, made thousands of
# shapes, so primitives were made again and again (~15 % of the CPU time, 200 documents).
# Padding patches come after the real ones (causal: unseen) and rows do not depend on the
# row count from MIN_BATCH_PATCHES up, so the bits are those without padding (tested).
CPU_BF16_BUCKET = 16


def float_scores(
    model: Megabyte,
    docs: Iterable,
    device="cpu",
    batch: int = 16,
    lanes: int = 1,
    dtype=None,
    bucket: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> Iterator[tuple[int, float]]:
    """Bits (ideal code length) of each document under the float model, streamed: yields
    (number of the document in `docs`, bits) as documents finish, not in order. `docs`
    holds Documents (megazip.datasets) or bytes. Up to `batch` segments are in flight as
    lanes; each document is one segment unless `lanes` > 1. With dtype=None (float32) and
    bucket=1 (its default) the bits are exactly float_bits' (float_bits of each segment,
    summed). `bucket` pads final chunks to a multiple of that many patches (None:
    CPU_BF16_BUCKET for bfloat16 on the CPU, where it leaves the bits as they are, else 1).
    `threads` worker threads (default: default_threads) run the model, each with one torch
    thread; 0 runs everything in the caller with its torch settings. The bits do not
    depend on it."""
    from .datasets import Document

    model = model.to(device).eval()
    if _cpu_bf16(device, dtype):
        model = bf16_model(model)
    autocast = _autocast(device, dtype)
    cpu = torch.device(device).type == "cpu"
    if bucket is None:
        bucket = CPU_BF16_BUCKET if _cpu_bf16(device, dtype) else 1
    P = model.config.patch_size
    pending: dict[int, list] = {}  # document number -> bits of its segments (None: running)
    flight: list[_Lane] = []
    steps: deque[_Step] = deque()
    threads = default_threads(device) if threads is None else threads

    def segments():
        for d, doc in enumerate(docs):
            if not isinstance(doc, Document):
                doc = Document.from_bytes(str(d), bytes(doc))
            bounds = segment_bounds(doc.size, lanes, P)
            pending[d] = [None] * len(bounds)
            for s, (offset, size) in enumerate(bounds):
                yield (d, s), doc, offset, size

    def finish(key, bits):
        d, s = key
        pending[d][s] = bits
        if all(b is not None for b in pending[d]):
            yield d, sum(pending.pop(d))

    def drain():
        step = steps.popleft()
        parts = [f.result() for f in step.pieces]
        logp = (np.concatenate(parts) if len(parts) > 1 else parts[0]).reshape(-1, step.width)
        for j, lane in enumerate(step.group):
            lane.acc.add(logp[j, : step.valid[j]])
            lane.queued -= 1
        if on_bytes:
            on_bytes(sum(step.valid))
        for lane in step.group:
            if lane.done == lane.patches and lane.queued == 0:
                lane.reader.close()
                yield from finish(lane.key, lane.acc.total() / LN2)

    before = torch.get_num_threads()
    pool = _Workers(threads) if threads > 0 else _Inline()
    if threads > 0:
        torch.set_num_threads(1)
    try:
        source = segments()
        while True:
            while len(flight) < batch:
                item = next(source, None)
                if item is None:
                    break
                key, doc, offset, size = item
                if size == 0:
                    yield from finish(key, 0.0)
                    continue
                reader = doc.open()
                if offset:
                    reader.seek(offset)
                flight.append(_Lane(key, reader, size, -(-size // P), NllSum(size)))
            if not flight:
                break
            groups: dict[tuple, list[_Lane]] = {}
            for lane in flight:
                groups.setdefault(lane.signature(bucket, not cpu), []).append(lane)
            (first, _, n, _), group = max(groups.items(), key=lambda kv: len(kv[1]))
            steps.append(_global_step(model, group, n, first, device, autocast, pool))
            flight = [lane for lane in flight if lane.done < lane.patches]
            while len(steps) > (PENDING_STEPS if threads > 0 else 0):
                yield from drain()
        while steps:
            yield from drain()
    finally:
        pool.close()
        for lane in flight:
            lane.reader.close()
        if threads > 0:
            torch.set_num_threads(before)


def evaluate(
    model: Megabyte | Callable[[bytes], float],
    paths,
    device="cpu",
    on_file: Callable[[FileScore], None] | None = None,
) -> tuple[list[FileScore], FileScore]:
    """Score every file under `paths`. `model` is a float Megabyte (scored streaming, one
    file at a time) or any function bytes -> bits. Returns (per-file scores, total), the
    total bytes-weighted."""
    from .datasets import extension, file_document

    files = list_files(paths)
    scores = []
    if isinstance(model, Megabyte):
        docs = [file_document(Path(f)) for f in files]
        for d, bits in float_scores(model, docs, device, batch=1):
            scores.append(FileScore(str(files[d]), docs[d].size, bits, docs[d].kind))
            if on_file:
                on_file(scores[-1])
    else:
        for f in files:
            data = Path(f).read_bytes()
            scores.append(FileScore(str(f), len(data), model(data), extension(Path(f).name)))
            if on_file:
                on_file(scores[-1])
    total = FileScore("total", sum(s.bytes for s in scores), sum(s.bits for s in scores))
    return scores, total


def int_code_lengths(int_model, data: bytes) -> tuple[float, float]:
    """(bits under the integer model alone, bits after the adaptive stage) for `data` as
    one segment: exactly the encoder's code length (container.compress's model_bits and
    prior_bits) for `data` coded as one segment (segment size >= len(data)), the block's
    record length included (megazip.coder.code_lengths)."""
    from .coder import code_lengths

    if not data:
        return 0.0, 0.0
    prior, final = code_lengths(int_model, [bytes(data)])
    return prior[0], final[0]


def int_bits(int_model, data: bytes, adaptive: bool = False) -> float:
    """Ideal code length of `data` in bits under the integer coding model (one segment),
    after the adaptive stage if `adaptive` (see int_code_lengths)."""
    return int_code_lengths(int_model, data)[1 if adaptive else 0]


# ---------------------------------------------------------------- datasets and reports


@dataclass
class DocResult:
    """Scores of one document: bits per column ("float", "int", "adaptive")."""

    index: int  # position of the document in the whole input (all ranks)
    name: str
    kind: str
    bytes: int
    bits: dict[str, float] = field(default_factory=dict)


INT_SEGMENT = 8 << 20  # --int: bytes per segment at most (container.FRAME_SIZE)


def int_segments(size: int, lanes: int, patch_size: int) -> list[tuple[int, int]]:
    """(offset, length) of the segments --int scores a document of `size` bytes as: those
    of segment_bounds, each cut further into pieces of at most INT_SEGMENT bytes. A segment
    is coded as one lane whose adaptive state keeps its whole history and whose int64
    lanes tensor is 8 bytes a byte, so this bounds the memory; it is the longest segment
    the compressor's default frames hold, and documents up to it score as one segment."""
    out = []
    for o, n in segment_bounds(size, lanes, patch_size):
        out += [(o + a, min(INT_SEGMENT, n - a)) for a in range(0, n, INT_SEGMENT)] or [(o, 0)]
    return out


def score_documents(
    docs: Iterable[tuple[int, object]],
    float_model: Megabyte | None = None,
    int_model=None,
    device="cpu",
    batch: int = 16,
    lanes: int = 1,
    dtype=None,
    bucket: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> list[DocResult]:
    """Score (number, Document) pairs with the float model (streamed, batched, on
    `threads` worker threads) and/or the integer coding model and its adaptive stage
    (`int_code_lengths` of each of int_segments' segments, one document at a time, read
    one segment at a time). Returns the results in document order."""
    results: dict[int, DocResult] = {}
    order: list[int] = []
    P = (float_model or int_model).config.patch_size

    def feed():
        for index, doc in docs:
            r = results[index] = DocResult(index, doc.name, doc.kind, doc.size)
            order.append(index)
            if int_model is not None:
                prior = final = 0.0
                with doc.open() as f:
                    for o, n in int_segments(doc.size, lanes, P):
                        if not n:
                            continue
                        f.seek(o)
                        p, q = int_code_lengths(int_model, _read_exact(f, n))
                        prior, final = prior + p, final + q
                r.bits["int"], r.bits["adaptive"] = prior, final
                if float_model is None and on_bytes:
                    on_bytes(doc.size)
            yield doc

    if float_model is None:
        for _ in feed():
            pass
    else:
        stream = float_scores(
            float_model, feed(), device, batch, lanes, dtype, bucket, on_bytes, threads
        )
        for d, bits in stream:
            r = results[order[d]]
            r.bits = {"float": bits, **r.bits}
    return [results[i] for i in sorted(results)]


def _cell(bits: float, n: int) -> dict:
    return {"bits": bits, "bits_per_byte": bits / n if n else 0.0}


def _totals(rows: list[DocResult], columns: list[str]) -> dict:
    n = sum(r.bytes for r in rows)
    out = {"documents": len(rows), "bytes": n}
    for c in columns:
        out[c] = _cell(sum(r.bits[c] for r in rows), n)
    return out


def report(results: list[DocResult], model: str, settings: dict | None = None) -> dict:
    """The JSON-able report: settings, per document, per kind and total. Totals are sums
    in document order, so they do not depend on how the work was split."""
    results = sorted(results, key=lambda r: r.index)
    columns = [c for c in ("float", "int", "adaptive") if results and c in results[0].bits]
    by_kind: dict[str, list[DocResult]] = {}
    for r in results:
        by_kind.setdefault(r.kind, []).append(r)
    return {
        "model": model,
        **(settings or {}),
        "files": [
            {"path": r.name, "bytes": r.bytes, "kind": r.kind}
            | {c: _cell(r.bits[c], r.bytes) for c in columns}
            for r in results
        ],
        "kinds": {k: _totals(v, columns) for k, v in sorted(by_kind.items())},
        "total": _totals(results, columns),
    }


def _columns(doc: dict) -> list[str]:
    return [c for c in ("float", "int", "adaptive") if c in doc["total"]]


def lanes_note(lanes: int) -> str:
    return (
        f"lanes: {lanes} (each document is split into {lanes} segments scored as "
        "independent streams: less context than one stream, so more bits)"
    )


def format_table(doc: dict, documents: bool = True) -> str:
    """A text table: one row per document (unless documents=False), per kind when there
    are several, and the total last."""
    cols = _columns(doc)
    rows = [(f["path"], f) for f in doc["files"]] if documents else []
    if len(doc["kinds"]) > 1:
        rows += [(f"kind {k}", v) for k, v in doc["kinds"].items()]
    rows.append(("total", doc["total"]))
    width = max([len(name) for name, _ in rows] + [5])
    head = "".join(f"  {'bits/byte (' + c + ')':>17}" for c in cols)
    lines = [f"note: {lanes_note(doc['lanes'])}"] if doc.get("lanes", 1) > 1 else []
    cut = doc.get("int_segment")
    if cut and any(f["bytes"] > cut for f in doc["files"]):
        lines.append(
            f"note: int, adaptive: documents over {cut:,} bytes are scored in segments of that size"
        )
    lines.append(f"{'file':<{width}}  {'bytes':>10}{head}")
    for name, r in rows:
        cells = "".join(f"  {r[c]['bits_per_byte']:>17.3f}" for c in cols)
        lines.append(f"{name:<{width}}  {r['bytes']:>10,}{cells}")
    return "\n".join(lines)


def format_csv(doc: dict) -> str:
    """CSV: scope (document, kind, total), name, kind, bytes, then bits and bits/byte per
    column; floats written in full (repr)."""
    cols = _columns(doc)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["scope", "name", "kind", "bytes"] + [f"{c}_{m}" for c in cols for m in _METRICS])
    rows = [("document", f["path"], f["kind"], f) for f in doc["files"]]
    rows += [("kind", k, k, v) for k, v in doc["kinds"].items()]
    rows.append(("total", "total", "", doc["total"]))
    for scope, name, kind, r in rows:
        cells = [repr(r[c][m]) for c in cols for m in _METRICS]
        w.writerow([scope, name, kind, r["bytes"], *cells])
    return out.getvalue()


_METRICS = ("bits", "bits_per_byte")


def plot_histogram(doc: dict, path) -> Path:
    """A histogram of bits/byte per document (one series per column) written to `path`
    (.png, .svg or .pdf). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib (pip install 'megazip[plot]')") from None
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in _columns(doc):
        values = [f[c]["bits_per_byte"] for f in doc["files"] if f["bytes"]]
        ax.hist(values, bins=min(50, max(5, len(values) // 4)), alpha=0.6, label=c)
    total = doc["total"]
    ax.set_xlabel("bits per byte")
    ax.set_ylabel("documents")
    ax.set_title(
        f"{doc['model']}: {total['documents']:,} documents, {total['bytes']:,} bytes"
        + (f", lanes {doc['lanes']}" if doc.get("lanes", 1) > 1 else "")
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
