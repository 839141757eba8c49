"""Range coding of byte lanes with the integer model's count tables (constriction).

A *block* is up to G segments ("lanes") coded together in one range-coder stream. The
lanes advance in lockstep: at byte position t, every lane still longer than t codes its
byte t, in lane order. The encoder gets all tables from one teacher-forced pass
(BlockTables); the decoder recomputes them byte by byte; the integer model makes both
identical.

Lanes are zero-padded to a whole number of patches; padding bytes are never coded (the
decoder feeds zeros in their place, exactly as the encoder saw them).

One code path per job: BlockTables yields a block's final tables chunk by chunk (the
record length chosen and signalled as the stream does) and adds up their code lengths;
encode_block range-codes those tables, code_lengths (evaluation) only iterates them, so an
evaluation's code length is the encoder's to the last bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from . import adaptive as adaptive_stage
from .adaptive import LaneModels
from .intmodel import COUNT_BITS, PAD_BYTE, IntMegabyte, exact_float32_matmuls

FAMILY = constriction.stream.model.Categorical(perfect=False)
CHUNK_PATCHES = 64  # patches per teacher-forced chunk (any value gives the same tables)
DECODE_THREADS = 1  # torch threads while decode_block runs on the CPU (None: leave as is)


class CorruptStream(ValueError):
    """A stream that no encoder wrote: constriction refused it, or its framing is wrong."""


def lanes_tensor(segments: list[bytes], patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lanes (B, T) int64 zero-padded to a multiple of `patch`, lengths (B,) int64)."""
    lengths = torch.tensor([len(s) for s in segments], dtype=torch.int64)
    T = -(-max(1, int(lengths.max())) // patch) * patch
    lanes = torch.zeros(len(segments), T, dtype=torch.int64)
    for i, s in enumerate(segments):
        lanes[i, : len(s)] = torch.frombuffer(bytearray(s), dtype=torch.uint8)
    return lanes, lengths


def code_bits(counts: torch.Tensor, symbols: torch.Tensor) -> torch.Tensor:
    """-log2 p(symbol) per position (float64; for accounting only, never for coding)."""
    c = counts.gather(-1, symbols[..., None])[..., 0].double()
    return COUNT_BITS - torch.log2(c)


@dataclass
class Chunk:
    """C consecutive positions of a block, from byte `start` of every lane."""

    start: int
    symbols: torch.Tensor  # (B, C) int64: the bytes (padding zeros past a lane's end)
    active: torch.Tensor  # (B, C) bool: positions that are coded (inside their lane)
    prior: torch.Tensor  # (B, C, 256) int64: the integer model's counts
    final: torch.Tensor  # (B, C, 256) int64: the counts coded (prior without the stage)

    def bits(self, counts: torch.Tensor) -> torch.Tensor:
        """(B,) float64: bits of each lane's active positions under `counts`."""
        return torch.where(self.active, code_bits(counts, self.symbols), 0.0).sum(1)


class BlockTables:
    """The tables that code one block of `segments` (its lanes), in order.

    With the adaptive stage, the block's record length is chosen from all its bytes
    (adaptive.choose_record) and `head` holds it as the stream's first 4 bytes
    (little-endian); without it, `head` is empty. Iterating yields Chunk after Chunk
    (CPU tensors), each position's final table computed exactly as the decoder will, and
    adds up the code lengths: after a full iteration, `prior_bits` and `final_bits`
    (B,) float64 hold each segment's bits under the integer model alone and under the
    final tables (sums of -log2 p, chunk by chunk in position order)."""

    def __init__(
        self,
        int_model: IntMegabyte,
        segments: list[bytes],
        adaptive: bool = True,
        chunk_patches: int = CHUNK_PATCHES,
    ):
        self.int_model, self.adaptive, self.chunk_patches = int_model, adaptive, chunk_patches
        self.lanes, self.lengths = lanes_tensor(segments, int_model.config.patch_size)
        self.record = adaptive_stage.choose_record(segments) if adaptive else 0
        self.head = self.record.to_bytes(4, "little") if adaptive else b""
        self.prior_bits = torch.zeros(len(segments), dtype=torch.float64)
        self.final_bits = torch.zeros(len(segments), dtype=torch.float64)

    def __iter__(self) -> Iterator[Chunk]:
        lanes, lengths = self.lanes, self.lengths
        models = LaneModels(len(lengths), lanes.shape[1], self.record) if self.adaptive else None
        for start, counts in self.int_model.count_tables(lanes, self.chunk_patches):
            prior = counts.cpu()
            C = prior.shape[1]
            sym = lanes[:, start : start + C]
            active = lengths[:, None] > torch.arange(start, start + C)  # (B, C)
            final = prior
            if models is not None:
                final = torch.from_numpy(
                    adaptive_stage.mix_chunk(models, prior.numpy(), sym.numpy(), active.numpy())
                )
            chunk = Chunk(start, sym, active, prior, final)
            self.prior_bits += chunk.bits(prior)
            self.final_bits += chunk.bits(final)
            yield chunk


def code_lengths(
    int_model: IntMegabyte,
    segments: list[bytes],
    adaptive: bool = True,
    chunk_patches: int = CHUNK_PATCHES,
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
    int_model: IntMegabyte,
    segments: list[bytes],
    chunk_patches: int = CHUNK_PATCHES,
    progress: Callable[[int], None] | None = None,
    adaptive: bool = True,
    prior_bits: list[float] | None = None,
) -> tuple[bytes, list[float]]:
    """Encode up to G non-empty segments as one stream, with the adaptive stage
    (megazip/adaptive.py) after the model unless adaptive=False. Returns (stream bytes,
    ideal code length of each segment in bits under the final tables, as code_lengths
    gives it). If `prior_bits` is a list, the model-alone code length of each segment is
    appended to it. `progress` is called with the bytes done."""
    tables = BlockTables(int_model, segments, adaptive, chunk_patches)
    enc = constriction.stream.queue.RangeEncoder()
    for chunk in tables:
        order = chunk.active.t()  # position-major: (C, B)
        probs = chunk.final.transpose(0, 1)[order].to(torch.float64).numpy()
        symbols = chunk.symbols.t()[order].to(torch.int32).numpy()
        if len(symbols):
            enc.encode(symbols, FAMILY, probs)
        if progress:
            progress(int(chunk.active.sum()))
    if prior_bits is not None:
        prior_bits.extend(tables.prior_bits.tolist())
    stream = tables.head + enc.get_compressed().astype("<u4").tobytes()
    return stream, tables.final_bits.tolist()


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Within: torch runs `n` intra-op threads (None: unchanged); restored on exit, also
    on error. The setting is the process's, so it applies to other threads meanwhile."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def decode_block(
    int_model: IntMegabyte,
    stream: bytes,
    lengths: list[int],
    progress: Callable[[int], None] | None = None,
    adaptive: bool = True,
    threads: int | None = DECODE_THREADS,
) -> list[bytes]:
    """Decode the lanes of one block from `stream`, given each lane's length (and whether
    the encoder used the adaptive stage).

    Byte by byte, every product has only B rows: a second CPU thread gains nothing, and on
    a busy machine its barriers cost more than the work. So on the CPU torch runs
    `threads` threads (default 1; None: the caller's setting) while this call runs, and
    the caller's thread count is restored when it returns or raises. The output does not
    depend on it."""
    P = int_model.config.patch_size
    if len(stream) % 4:
        raise CorruptStream("corrupt model stream: length is not a multiple of 4")
    record = 0
    if adaptive:  # the block's record length comes first
        if len(stream) < 4:
            raise CorruptStream("corrupt model stream: no record length")
        record = int.from_bytes(stream[:4], "little")
        if record > adaptive_stage.RECORD_LIMIT:
            raise CorruptStream("corrupt model stream: record length out of range")
        stream = stream[4:]
    words = np.frombuffer(stream, dtype="<u4").astype(np.uint32)  # little-endian on disk
    dec = constriction.stream.queue.RangeDecoder(words)
    B = len(lengths)
    T = -(-max(1, max(lengths)) // P) * P
    dev = int_model.device
    out = torch.zeros(B, T, dtype=torch.uint8, device=dev)  # one byte per decoded byte
    lens = torch.tensor(lengths, dtype=torch.int64, device=dev)
    state = int_model.new_state(B)
    models = LaneModels(B, T, record) if adaptive else None
    with torch_threads(threads if dev.type == "cpu" else None), exact_float32_matmuls():
        _decode_steps(int_model, dec, out, lens, state, models, progress)
    host = out.cpu().numpy()
    return [host[i, :n].tobytes() for i, n in enumerate(lengths)]


def _decode_steps(int_model, dec, out, lens, state, models, progress) -> None:
    """The lockstep decoding loop of decode_block: fills `out` (B, T) in place."""
    P = int_model.config.patch_size
    B, T = out.shape
    dev = int_model.device
    with torch.no_grad():
        for k in range(T // P):
            prev = (out[:, (k - 1) * P : k * P] if k else out[:, :P]).long()
            ctx = int_model.global_context(state, prev.reshape(B, 1, P))[:, 0]  # (B, P, L)
            int_model.begin_patch(state)
            prev_byte = torch.full((B,), PAD_BYTE, dtype=torch.int64, device=dev)
            for j in range(P):
                t = k * P + j
                counts = int_model.local_step(state, prev_byte, ctx[:, j])
                active = lens > t
                n = int(active.sum())
                if n == 0:
                    break
                if models is not None:
                    act = active.cpu().numpy()
                    final = adaptive_stage.mix(models, counts.cpu().numpy(), act)
                    probs = final[act].astype(np.float64)
                else:
                    probs = counts[active].to("cpu", torch.float64).numpy()
                try:
                    sym = dec.decode(FAMILY, probs)
                except (AssertionError, ValueError, RuntimeError, OverflowError):
                    # constriction found data no encoder writes with these tables
                    raise CorruptStream("corrupt model stream") from None
                byte = torch.from_numpy(sym.astype(np.uint8)).to(dev)
                if n == B:
                    out[:, t] = byte
                else:
                    out[active, t] = byte
                prev_byte = out[:, t].long()
                if models is not None:
                    adaptive_stage.update(models, out[:, t].cpu().numpy(), act)
                if progress:
                    progress(n)
