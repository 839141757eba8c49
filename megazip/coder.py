"""Range coding of byte lanes with the integer model's count tables (constriction).

A *block* is up to G segments ("lanes") coded together in one range-coder stream. The
lanes advance in lockstep: at byte position t, every lane still longer than t codes its
byte t, in lane order. The encoder gets all tables from one teacher-forced pass; the
decoder recomputes them byte by byte; the integer model makes both identical.

Lanes are zero-padded to a whole number of patches; padding bytes are never coded (the
decoder feeds zeros in their place, exactly as the encoder saw them).
"""

from __future__ import annotations

from collections.abc import Callable

import constriction
import numpy as np
import torch

from . import adaptive as adaptive_stage
from .adaptive import LaneModels
from .intmodel import COUNT_BITS, PAD_BYTE, IntMegabyte

FAMILY = constriction.stream.model.Categorical(perfect=False)


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


def encode_block(
    int_model: IntMegabyte,
    segments: list[bytes],
    chunk_patches: int = 64,
    progress: Callable[[int], None] | None = None,
    adaptive: bool = True,
    prior_bits: list[float] | None = None,
) -> tuple[bytes, list[float]]:
    """Encode up to G non-empty segments as one stream, with the adaptive stage
    (megazip/adaptive.py) after the model unless adaptive=False. Returns (stream bytes,
    ideal code length of each segment in bits under the final tables). If `prior_bits`
    is a list, the model-alone code length of each segment is appended to it.
    `progress` is called with the bytes done."""
    lanes, lengths = lanes_tensor(segments, int_model.config.patch_size)
    enc = constriction.stream.queue.RangeEncoder()
    bits = torch.zeros(len(segments), dtype=torch.float64)
    prior = torch.zeros(len(segments), dtype=torch.float64)
    models = None
    head = b""  # with the adaptive stage, the stream starts with the block's record length
    if adaptive:
        record = adaptive_stage.choose_record(segments)
        models = LaneModels(len(segments), lanes.shape[1], record)
        head = record.to_bytes(4, "little")
    for start, counts in int_model.count_tables(lanes, chunk_patches):
        counts = counts.cpu()
        C = counts.shape[1]
        sym = lanes[:, start : start + C]
        active = lengths[:, None] > torch.arange(start, start + C)  # (B, C)
        prior += torch.where(active, code_bits(counts, sym), 0.0).sum(1)
        if models is not None:
            counts = torch.from_numpy(
                adaptive_stage.mix_chunk(models, counts.numpy(), sym.numpy(), active.numpy())
            )
        bits += torch.where(active, code_bits(counts, sym), 0.0).sum(1)
        order = active.t()  # position-major: (C, B)
        probs = counts.transpose(0, 1)[order].to(torch.float64).numpy()
        symbols = sym.t()[order].to(torch.int32).numpy()
        if len(symbols):
            enc.encode(symbols, FAMILY, probs)
        if progress:
            progress(int(active.sum()))
    if prior_bits is not None:
        prior_bits.extend(prior.tolist())
    return head + enc.get_compressed().astype("<u4").tobytes(), bits.tolist()


def decode_block(
    int_model: IntMegabyte,
    stream: bytes,
    lengths: list[int],
    progress: Callable[[int], None] | None = None,
    adaptive: bool = True,
) -> list[bytes]:
    """Decode the lanes of one block from `stream`, given each lane's length (and whether
    the encoder used the adaptive stage)."""
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
    # Byte by byte, every product has only B rows: a second CPU thread gains nothing, and
    # on a busy machine its barriers cost more than the work. Decode on one thread.
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        _decode_steps(int_model, dec, out, lens, state, models, progress)
    finally:
        torch.set_num_threads(threads)
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
