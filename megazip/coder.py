"""Coding of byte lanes with the integer model's count tables: with the adaptive stage, its
8 binary decisions a byte by the stage's arithmetic coder (adaptive.PathEncoder /
PathDecoder); without it, a byte per symbol by constriction's range coder.

A *block* is up to G segments ("lanes") coded together in one stream. The lanes advance
in lockstep: at byte position t, every lane still longer than t codes its byte t, in
lane order (with the adaptive stage: depth by depth, the lanes in order at each depth).
The encoder gets all tables from one teacher-forced pass (BlockTables); the decoder
recomputes them byte by byte; the integer model makes both identical.

Lanes are zero-padded to a whole number of patches; padding bytes are never coded (the
decoder feeds zeros in their place, exactly as the encoder saw them).

One code path per job: BlockTables yields a block's final tables chunk by chunk (the
record length chosen and signalled as the stream does) and adds up their code lengths;
encode_block codes those tables, code_lengths (evaluation) only iterates them, so an
evaluation's code length is the encoder's to the last bit.

Everything here is numpy: the integer model is NpMegabyte (megazip/npmodel.py, the CPU
path: no torch is imported) or the torch IntMegabyte (CUDA, and the reference), which
_TorchModel below adapts to the same numpy interface, importing torch only then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import constriction
import numpy as np

from . import adaptive as adaptive_stage
from .adaptive import LaneModels
from .modelspec import COUNT_BITS, PAD_BYTE

FAMILY = constriction.stream.model.Categorical(perfect=False)
CHUNK_PATCHES = 64  # patches per teacher-forced chunk (any value gives the same tables)
CHUNK_POSITIONS = 2048  # ... but at most about this many positions (lanes x bytes) per
# chunk: a chunk's tables and activations are lanes x positions x 256 integers, and with
# many short lanes (the default layout) 64 patches of every lane would hold far more
# memory than the few long lanes of 16 KiB segments did
DECODE_THREADS = 1  # torch threads while decode_block runs on the CPU (None: leave as is)
SPLIT_MIN_LANES = 16  # decode_block with lane_threads > 1: model and mix on two threads
# (_decode_steps_split) from this many lanes; with fewer, the hand-offs between the
# threads cost more than the halved work saves
SPLIT_MAIN_SIXTEENTHS = 6  # ... of which the decoding thread takes 6/16 of the lanes (it
# also decodes and updates every lane: 6/16 gave both threads the same CPU time on
# 32 lanes of text, 8/16 left the decoding thread ~20 % behind)


def chunk_patches_for(lanes: int, patch: int = 8) -> int:
    """The default patches per chunk for a block of `lanes` lanes."""
    return max(1, min(CHUNK_PATCHES, CHUNK_POSITIONS // (max(lanes, 1) * patch)))


class CorruptStream(ValueError):
    """A stream that no encoder wrote: constriction refused it, or its framing is wrong."""


def lanes_array(segments: list[bytes], patch: int) -> tuple[np.ndarray, np.ndarray]:
    """(lanes (B, T) int64 zero-padded to a multiple of `patch`, lengths (B,) int64)."""
    lengths = np.array([len(s) for s in segments], dtype=np.int64)
    T = -(-max(1, int(lengths.max())) // patch) * patch
    lanes = np.zeros((len(segments), T), dtype=np.int64)
    for i, s in enumerate(segments):
        lanes[i, : len(s)] = np.frombuffer(s, dtype=np.uint8)
    return lanes, lengths


def code_bits(counts, symbols) -> np.ndarray:
    """-log2 p(symbol) per position (float64; for accounting only, never for coding).
    counts (..., 256) and symbols (...) integer arrays (or CPU tensors)."""
    counts, symbols = np.asarray(counts), np.asarray(symbols)
    c = np.take_along_axis(counts, symbols[..., None].astype(np.int64), -1)[..., 0]
    return COUNT_BITS - np.log2(c.astype(np.float64))


class _TorchModel:
    """A torch IntMegabyte (megazip/intmodel.py) behind NpMegabyte's numpy interface:
    numpy in, numpy out (tables copied from the device once per call)."""

    def __init__(self, m):
        import torch

        self.m, self.torch, self.config = m, torch, m.config
        self.device = m.device

    def content_hash(self) -> str:
        return self.m.content_hash()

    def threads(self, n: int | None):
        return torch_threads(n) if self.device.type == "cpu" else contextlib.nullcontext()

    def count_tables(self, lanes: np.ndarray, chunk_patches: int):
        for start, counts in self.m.count_tables(self.torch.from_numpy(lanes), chunk_patches):
            yield start, counts.cpu().numpy()

    def new_state(self, batch: int):
        return self.m.new_state(batch)

    def begin_patch(self, state):
        self.m.begin_patch(state)

    def global_context(self, state, prev_patches: np.ndarray):
        with self.torch.no_grad():
            prev = self.torch.from_numpy(prev_patches.astype(np.int64)).to(self.device)
            return self.m.global_context(state, prev)  # stays on the device

    def local_step(self, state, prev_byte: np.ndarray, context) -> np.ndarray:
        with self.torch.no_grad():
            prev = self.torch.from_numpy(prev_byte.astype(np.int64)).to(self.device)
            return self.m.local_step(state, prev, context).cpu().numpy()


def numpy_model(int_model):
    """`int_model` with the numpy interface of NpMegabyte (an NpMegabyte as it is, an
    IntMegabyte adapted)."""
    if getattr(int_model, "numpy_api", False):
        return int_model
    return _TorchModel(int_model)


@dataclass
class Chunk:
    """C consecutive positions of a block, from byte `start` of every lane."""

    start: int
    symbols: np.ndarray  # (B, C) int64: the bytes (padding zeros past a lane's end)
    active: np.ndarray  # (B, C) bool: positions that are coded (inside their lane)
    prior: np.ndarray  # (B, C, 256) int64: the integer model's counts
    path: np.ndarray | None  # with the adaptive stage (B, C, 8) int64: p(bit = 1) in
    # 1/65536 of each of a byte's 8 binary decisions, most significant first, as coded;
    # None without it (the prior's counts are coded)

    def prior_bits(self) -> np.ndarray:
        """(B,) float64: bits of each lane's active positions under the prior alone."""
        return np.where(self.active, code_bits(self.prior, self.symbols), 0.0).sum(1)

    def final_bits(self) -> np.ndarray:
        """(B,) float64: bits of each lane's active positions as coded."""
        if self.path is None:
            return self.prior_bits()
        bits = adaptive_stage.path_bits(self.path, self.symbols)
        return np.where(self.active, bits, 0.0).sum(1)


class BlockTables:
    """The tables that code one block of `segments` (its lanes), in order.

    With the adaptive stage, the block's record length is chosen from all its bytes
    (adaptive.choose_record) and `head` holds it as the stream's first bytes
    (adaptive.record_head); without it, `head` is empty. Iterating yields Chunk after Chunk
    (numpy arrays), each position's final table computed exactly as the decoder will, and
    adds up the code lengths: after a full iteration, `prior_bits` and `final_bits`
    (B,) float64 hold each segment's bits under the integer model alone and under the
    final tables (sums of -log2 p, chunk by chunk in position order)."""

    def __init__(
        self,
        int_model,
        segments: list[bytes],
        adaptive: bool = True,
        chunk_patches: int | None = None,
        threads: int | None = None,
    ):
        int_model = numpy_model(int_model)
        self.int_model, self.adaptive = int_model, adaptive
        P = int_model.config.patch_size
        self.chunk_patches = chunk_patches or chunk_patches_for(len(segments), P)
        self.threads = threads
        self.lanes, self.lengths = lanes_array(segments, int_model.config.patch_size)
        self.record = adaptive_stage.choose_record(segments) if adaptive else 0
        self.head = adaptive_stage.record_head(self.record) if adaptive else b""
        self.prior_bits = np.zeros(len(segments), dtype=np.float64)
        self.final_bits = np.zeros(len(segments), dtype=np.float64)

    def __iter__(self) -> Iterator[Chunk]:
        lanes, lengths = self.lanes, self.lengths
        models = LaneModels(len(lengths), lanes.shape[1], self.record) if self.adaptive else None
        tables = self.int_model.count_tables(lanes, self.chunk_patches)
        with contextlib.ExitStack() as stack:
            n = self.threads
            stack.enter_context(
                _model_threads(self.int_model, None if n is None else max(1, n - 1))
            )
            if n is not None and n > 1 and models is not None:  # the model a chunk ahead
                tables = stack.enter_context(_ahead(tables))
            for start, prior in tables:
                C = prior.shape[1]
                sym = lanes[:, start : start + C]
                active = lengths[:, None] > np.arange(start, start + C)  # (B, C)
                path = None
                if models is not None:
                    path = adaptive_stage.mix_chunk(models, prior, sym, active)
                chunk = Chunk(start, sym, active, prior, path)
                self.prior_bits += chunk.prior_bits()
                self.final_bits += chunk.final_bits()
                yield chunk


def _model_threads(model, n: int | None):
    """Within: a torch model runs `n` intra-op threads (None: unchanged); NpMegabyte's
    BLAS keeps its own setting (OPENBLAS_NUM_THREADS; the CLI and workers use 1)."""
    threads = getattr(model, "threads", None)
    return threads(n) if threads is not None else contextlib.nullcontext()


@contextlib.contextmanager
def _ahead(items: Iterator):
    """Within: an iterator over `items`, which a second thread computes one item ahead
    of the consumer (for a generator whose work releases the GIL: torch ops,
    numba nogil kernels). Items and their order are unchanged; an error in the producer
    is raised in the consumer; leaving early stops the producer."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((item, None))
                q.join()  # until the consumer took it: at most two items alive
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((done, e))
            return
        q.put((done, None))

    def consume():
        while True:
            item, err = q.get()
            q.task_done()
            if err is not None:
                raise err
            if item is done:
                return
            yield item

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting to put
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)
                q.task_done()
        worker.join()


def code_lengths(
    int_model,
    segments: list[bytes],
    adaptive: bool = True,
    chunk_patches: int | None = None,
) -> tuple[list[float], list[float]]:
    """(prior bits, final bits) of each segment coded as the lanes of one block: the ideal
    code length under the integer model alone and under the tables encode_block codes
    (BlockTables' sums, so equal to encode_block's to the last bit for the same
    chunk_patches; another chunk_patches gives the same tables, summed in another order)."""
    tables = BlockTables(int_model, segments, adaptive, chunk_patches)
    for _ in tables:
        pass
    return tables.prior_bits.tolist(), tables.final_bits.tolist()


def encode_block(
    int_model,
    segments: list[bytes],
    chunk_patches: int | None = None,
    progress: Callable[[int], None] | None = None,
    adaptive: bool = True,
    prior_bits: list[float] | None = None,
    threads: int | None = None,
) -> tuple[bytes, list[float]]:
    """Encode up to G non-empty segments as one stream, with the adaptive stage
    (megazip/adaptive.py) after the model unless adaptive=False. Returns (stream bytes,
    ideal code length of each segment in bits under the final tables, as code_lengths
    gives it). If `prior_bits` is a list, the model-alone code length of each segment is
    appended to it. `progress` is called with the bytes done. `threads` (None: the
    caller's torch setting, unchanged): with 1, torch runs one thread; with n >= 2 and the
    adaptive stage, the model runs a chunk ahead on a second thread with n - 1 torch
    threads while this one mixes. The tables and bytes are the same for any value."""
    tables = BlockTables(int_model, segments, adaptive, chunk_patches, threads=threads)
    enc = constriction.stream.queue.RangeEncoder()
    bit_enc = adaptive_stage.PathEncoder()
    for chunk in tables:
        if chunk.path is None:  # a byte per position, position-major: (C, B)
            order = chunk.active.T
            probs = chunk.prior.transpose(1, 0, 2)[order].astype(np.float64)
            symbols = chunk.symbols.T[order].astype(np.int32)
            if len(symbols):
                enc.encode(symbols, FAMILY, probs)
        else:  # 8 bits per position: position, then depth, then lane
            bit_enc.encode(chunk.path, chunk.symbols, chunk.active)
        if progress:
            progress(int(chunk.active.sum()))
    if prior_bits is not None:
        prior_bits.extend(tables.prior_bits.tolist())
    if adaptive:
        stream = tables.head + bit_enc.finish()
    else:
        stream = enc.get_compressed().astype("<u4").tobytes()
    return stream, tables.final_bits.tolist()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Within: torch runs `n` intra-op threads (None: unchanged); restored on exit, also
    on error. The setting is the process's, so it applies to other threads meanwhile."""
    import torch

    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def decode_block(
    int_model,
    stream: bytes,
    lengths: list[int],
    progress: Callable[[int], None] | None = None,
    adaptive: bool = True,
    threads: int | None = DECODE_THREADS,
    lane_threads: int = 1,
) -> list[bytes]:
    """Decode the lanes of one block from `stream`, given each lane's length (and whether
    the encoder used the adaptive stage).

    Byte by byte, every product has only B rows: a second CPU thread gains nothing, and on
    a busy machine its barriers cost more than the work. So on the CPU torch runs
    `threads` threads (default 1; None: the caller's setting) while this call runs, and
    the caller's thread count is restored when it returns or raises. With NpMegabyte,
    `lane_threads` > 1 threads compute the model for groups of lanes in parallel
    (npmodel.LaneGroups); with the adaptive stage and at least SPLIT_MIN_LANES lanes,
    two threads run the model (and adaptive.begin) of half of the lanes each
    (_decode_steps_split). The output depends on none of this."""
    P = int_model.config.patch_size
    record = 0
    if adaptive:  # the block's record length, then the arithmetic code of the decisions
        try:
            record, k = adaptive_stage.read_record_head(stream)
        except ValueError:
            raise CorruptStream("corrupt model stream: no valid record length") from None
        dec = adaptive_stage.PathDecoder(stream[k:])
    else:
        if len(stream) % 4:
            raise CorruptStream("corrupt model stream: length is not a multiple of 4")
        words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)  # little-endian
        dec = constriction.stream.queue.RangeDecoder(words)
    B = len(lengths)
    T = -(-max(1, max(lengths)) // P) * P
    int_model = numpy_model(int_model)
    out = np.zeros((B, T), np.uint8)  # the decoded bytes, on the host
    models = LaneModels(B, T, record) if adaptive else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(_model_threads(int_model, threads))
        numpy_api = getattr(int_model, "numpy_api", False)
        if lane_threads > 1 and numpy_api and models is not None and B >= SPLIT_MIN_LANES:
            lens = np.asarray(lengths, np.int64)
            _decode_steps_split(int_model, dec, out, lens, models, progress)
            return [out[i, :n].tobytes() for i, n in enumerate(lengths)]
        if lane_threads > 1 and numpy_api:
            from .npmodel import LaneGroups

            int_model = stack.enter_context(LaneGroups(int_model, B, lane_threads))
        state = int_model.new_state(B)
        _decode_steps(int_model, dec, out, np.asarray(lengths, np.int64), state, models, progress)
    return [out[i, :n].tobytes() for i, n in enumerate(lengths)]


def _decode_steps(int_model, dec, out, lens, state, models, progress) -> None:
    """The lockstep decoding loop of decode_block: fills `out` (B, T) uint8 in place.
    Bookkeeping (lengths, active lanes, the bytes) stays on the host; per step one model
    call (the whole local model), then with the adaptive stage one call that decodes the
    byte of every lane (adaptive.PathDecoder) and one update, without it one range-decoder
    call."""
    P = int_model.config.patch_size
    B, T = out.shape
    pad = np.full((B,), PAD_BYTE, dtype=np.int64)
    for k in range(T // P):
        prev = out[:, (k - 1) * P : k * P] if k else out[:, :P]
        ctx = int_model.global_context(state, prev.reshape(B, 1, P))[:, 0]  # (B, P, L)
        int_model.begin_patch(state)
        prev_byte = pad
        for j in range(P):
            t = k * P + j
            act = lens > t
            n = int(np.count_nonzero(act))
            if n == 0:  # every lane is done
                return
            counts = int_model.local_step(state, prev_byte, ctx[:, j])
            if models is None:
                sym = _range_decode(dec, counts if n == B else counts[act])
            else:
                adaptive_stage.begin(models, counts, act)
                sym = _decode_byte(dec, models, act, n)
            prev_byte = _store(out, t, sym, act, n, models, progress)


def _decode_byte(dec, models, act, n) -> np.ndarray:
    """With the adaptive stage: the next byte of every active lane (n of B) from `dec`
    (adaptive.PathDecoder), after adaptive.begin() of every lane; (n,) uint8."""
    sym = dec.decode(models, act)
    return sym if n == len(act) else sym[act]


def _range_decode(dec, counts: np.ndarray) -> np.ndarray:
    """One symbol per row of counts (m, 256) from `dec`, as uint8; CorruptStream if
    constriction finds data that no encoder writes with these tables."""
    try:
        return dec.decode(FAMILY, counts.astype(np.float64)).astype(np.uint8)
    except (AssertionError, ValueError, RuntimeError, OverflowError):
        raise CorruptStream("corrupt model stream") from None


def _store(out, t, sym, act, n, models, progress) -> np.ndarray:
    """After a decoding step: the n bytes `sym` of the active lanes into column t of
    `out`, the adaptive update (lane order), progress; returns the column as the next
    step's previous bytes (B,) int64."""
    if n == out.shape[0]:
        out[:, t] = sym
    else:
        out[act, t] = sym
    column = np.ascontiguousarray(out[:, t])
    if models is not None:
        adaptive_stage.update(models, column, act)
    if progress:
        progress(n)
    return column.astype(np.int64)


def _decode_steps_split(int_model, dec, out, lens, models, progress) -> None:
    """_decode_steps on two threads, with the same bytes. The lanes are cut into two
    groups (SPLIT_MAIN_SIXTEENTHS), each with its own model state. Once a step's bytes are
    known, a worker thread runs the model of the second group for the next step while
    this thread runs the adaptive update (lane order, the only part that writes state the
    lanes share), then the model of the first group; each thread then runs
    adaptive.begin of its group (the worker's after the update: begin reads the shared
    state), and this thread decodes the byte's 8 decisions of every lane
    (adaptive.PathDecoder). The numba kernels release the GIL, so the threads run at
    once."""
    import queue
    import threading

    P = int_model.config.patch_size
    B, T = out.shape
    h = B * SPLIT_MAIN_SIXTEENTHS // 16  # this thread's lanes: fewer, as it also decodes
    groups = ((0, h), (h, B))
    states = [int_model.new_state(hi - lo) for lo, hi in groups]
    ctx: list = [None, None]

    def model(g: int, k: int, j: int, prev_byte: np.ndarray) -> np.ndarray:
        lo, hi = groups[g]
        if j == 0:  # a patch starts: the global model's context for it
            prev = out[lo:hi, (k - 1) * P : k * P] if k else out[lo:hi, :P]
            ctx[g] = int_model.global_context(states[g], prev.reshape(hi - lo, 1, P))[:, 0]
            int_model.begin_patch(states[g])
        return int_model.local_step(states[g], prev_byte[lo:hi], ctx[g][:, j])

    todo: queue.SimpleQueue = queue.SimpleQueue()  # steps for the worker (None: stop)
    updated: queue.SimpleQueue = queue.SimpleQueue()  # the update before a step is done
    done: queue.SimpleQueue = queue.SimpleQueue()  # the worker's group has begun (or error)

    def work() -> None:
        while (task := todo.get()) is not None:
            try:
                k, j, prev_byte, act = task
                counts = model(1, k, j, prev_byte)
                if not updated.get():
                    return
                adaptive_stage.begin(models, counts, act[h:], h)
                done.put(None)
            except BaseException as e:  # noqa: BLE001 - handed to the decoding thread
                done.put(e)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        prev_byte = np.full((B,), PAD_BYTE, dtype=np.int64)
        last = None  # the previous step's (column, active lanes), not yet learned from
        for t in range(T):
            k, j = divmod(t, P)
            if j == 0:
                prev_byte = np.full((B,), PAD_BYTE, dtype=np.int64)
            act = lens > t
            n = int(np.count_nonzero(act))
            if n == 0:  # every lane is done
                return
            todo.put((k, j, prev_byte, act))
            try:
                if last is not None:
                    adaptive_stage.update(models, *last)
            finally:
                updated.put(True)  # exactly one token a step, also if the update failed
            try:
                counts = model(0, k, j, prev_byte)
                adaptive_stage.begin(models, counts, act[:h])
            finally:
                err = done.get()  # the worker's group is done (or failed)
            if err is not None:
                raise err
            sym = _decode_byte(dec, models, act, n)
            column = _store(out, t, sym, act, n, None, progress)
            last = (column.astype(np.uint8), act)
            prev_byte = column
    finally:
        updated.put(False)
        todo.put(None)
        worker.join()
