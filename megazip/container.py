"""The .mgz container: a sequence of independent *frames* (docs/FORMAT.md is the
byte-for-byte reference).

    frame    header: magic "\\x89MGZ", version, flags, frame index, original length,
             segment size, [adaptive stage, model name, model hash, lanes], segment
             table, block table, CRC-32 of the frame's original bytes, CRC-32 of the header
    body     payloads of stored, zstd and stage segments in segment order, then one
             range-coder stream per block of model-coded segments

Each frame covers at most MAX_FRAME bytes of input (FRAME_SIZE by default) and decodes on
its own, so compression and decompression stream (`compress_stream`, `decompress_stream`)
with memory bounded by the frame, whatever the input size. The last frame of a file has
the LAST flag, and frames carry their index, so a missing, repeated or reordered frame is
an error rather than a shorter output.

Inside a frame the input is cut into segments of `segment_size` bytes. Each segment is
stored raw, compressed with zstd, or coded by the model, whichever is smallest; model
segments are grouped into blocks of consecutive segment indices [b*G, (b+1)*G), and each
block's model segments are coded in lockstep as the lanes of one stream. When zstd -19 of
the whole frame beats all that, the frame is a single zstd segment. With the default
layout the frame is also coded as stage segments (the adaptive stage alone, one lane per
MiB, no model), kept where smaller (_Writer._staged). A frame in which zstd finds nothing
to remove anywhere (random or already compressed bytes) is stored without loading the
model at all.

A reader checks every length against fixed limits and against the bytes actually present
before it allocates or decodes anything, and every failure is a FormatError (or
ModelMismatch / checkpoint.ModelNotFound): damaged input never surfaces as another error.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

MAGIC = b"\x89MGZ"
VERSION = 4
# format 3 added stage segments (method 3, flag STAGE) to format 2; format 4 names the
# model by 8 bytes of its hash instead of 32 and codes the segment table as runs
READ_VERSIONS = (2, 3, 4)
MODEL_ID_BYTES = 8  # bytes of the model's SHA-256 a format-4 frame names it by (32 before)
# older format versions -> the megazip release that reads them (formats may change
# before 1.0: such files are refused with this name)
OLD_FORMATS = {1: "megazip 0.1.0"}
FLAG_LAST = 1  # the last frame of the file
FLAG_MODEL = 2  # the frame has model segments: adaptive stage, model identity, lanes follow
FLAG_STAGE = 4  # the frame has stage segments (format 3): the adaptive stage version follows
KNOWN_FLAGS = FLAG_LAST | FLAG_MODEL | FLAG_STAGE
STAGE_NONE = 0  # stage byte of a frame whose model streams do not use the adaptive stage
STORED, ZSTD, MODEL, STAGE = 0, 1, 2, 3
METHOD_NAMES = {STORED: "stored", ZSTD: "zstd", MODEL: "model", STAGE: "stage"}
ZSTD_LEVEL = 19

# Limits a reader enforces (FORMAT.md, "Limits"); a writer never exceeds them.
MAX_FRAME = 1 << 26  # original bytes of one frame
MAX_SEGMENTS = 1 << 16  # segments of one frame
MAX_LANES = 1 << 10  # lanes (segments) of one block: bounds a decoder's per-lane state
MAX_RATIO = 256  # a block's lanes (a stage segment) hold at most this many bytes per byte
# of its stream: a reader's work is bounded by the bytes it is given
MAX_NAME = 255
# What decoding one model block allocates beyond its bytes (FORMAT.md, "Limits"): the
# adaptive stage's state per lane and its shared tables (at their caps).
STATE_PER_LANE = 35_000
STATE_SHARED = 300_000_000
# Adaptive-stage versions of format-2 files that this release no longer decodes, and the
# megazip release that does.
OLD_STAGES = {
    3: "0.2.0",
    4: "0.3.0",
    5: "0.4.0",
    6: "0.5.0",
    7: "0.6.0",
    8: "0.7.0",
    9: "0.8.0",
    10: "0.9.0",
}

# Writer defaults.
FRAME_SIZE = 8 << 20  # bytes of input per frame (see FORMAT.md, "Frames": costs ~nothing)
DEFAULT_LANES = 64  # with --segment-size and no --lanes
# With --lanes and no --segment-size, segments are at least MIN_SEGMENT bytes.
MIN_SEGMENT = 16384
# The default layout (default_layout): segments by frame size (LAYOUT_SEGMENTS: up to
# that many bytes, segments of this size; then LAYOUT_SEGMENT), and from two BLOCK_BYTES
# on, one block per whole BLOCK_BYTES, which --threads codes in parallel. Fewer lanes
# mean more lockstep decoding steps, each with a fixed cost (a 64 KiB file in 16 KiB
# segments took 16,384 steps of 4 lanes); shorter segments cost a little density, as
# every lane starts without context (measured on six Canterbury files, 234 KB, against
# 16 KiB: +1.1 % at 4 KiB, +2.1 % at 2 KiB), so only small inputs, whose bytes weigh
# little in any total, get the shortest (Canterbury total: +0.24 %).
LAYOUT_SEGMENTS = ((1 << 16, 2048), (1 << 18, 8192))
LAYOUT_SEGMENT = 16384
BLOCK_BYTES = 1 << 20
SEGMENT_ALIGN = 64  # default segment sizes are multiples of this (of every patch size)
STREAM_OVERHEAD = 4  # bytes a model segment is assumed to cost beyond its ideal length
RECODE_MIN_GAIN = 200  # a block is re-coded without the segments that lost only where
# they would save 1/200 of its stream (_code_block)
# Stage frames (format 3): with the default layout, the writer also codes the frame with
# the adaptive stage alone (adaptive.encode_stage: no model, one lane per segment, one
# segment per whole BLOCK_BYTES) and keeps whichever frame is smaller. Where the model
# adds little, one long lane learns more than many short ones (kennedy.xls: 13.7 KB
# against 17.6 KB) and decodes without the model, several times faster. The stage gives
# up early where it is clearly behind: at STAGE_CHECKS (fraction of a segment, allowed
# size over the model frame's cost of the same bytes, in permille), in segments of at
# least STAGE_CHECK_MIN bytes. The model frame's lanes learn from the whole frame at once,
# so early on the stage is always behind: on four Canterbury texts, where the model frame
# wins by 1.0-3.8 %, the stage was 11-19 % behind at a quarter and 6-10 % at half; on
# ptt5, where it wins by 8 %, 1.4 % behind at a quarter and 5 % ahead at half.
STAGE_CHECKS = ((1 / 4, 1080), (1 / 2, 1040))
STAGE_CHECK_MIN = 1 << 16
STAGE_HEAD_EARLY = 1250  # the stage-first check's head (below; as much of it as the stage
# coded before it stopped) also serves as a check, with the permille of the last
# STAGE_CHECKS fraction it covers, this one before the first, and 1000 where it is the
# whole segment: a frame whose start the stage alone codes clearly worse than the model
# frame does is not coded by the stage again (text: most of the writer's stage time). At
# 16 KiB, 4-14 % into a frame, the stage was 28-60 % behind on six texts, 5-19 % on
# three executables and a header file, and 13 % on mapsdatazrh, where it wins at the end
# ... and the other way round: a frame of at least STAGE_FIRST_MIN bytes whose first
# eighth (at least STAGE_FIRST_MIN bytes) the stage alone codes in under
# STAGE_FIRST_BITS / 1000 bits a byte is not given to the model at all (at such
# densities the stage's long contexts leave the prior nothing to add, and one lane beats
# many: kennedy.xls, ptt5, long runs), which saves the model's pass over it.
STAGE_FIRST_MIN = 1 << 16
STAGE_FIRST_BITS = 500
STAGE_MIN_PAYLOAD = 2  # the record length (a varint) and at least one coder byte
# "the model cannot help": every PROBE_WINDOW of the frame loses less than PROBE_GAIN of
# its size to zstd at PROBE_LEVEL (random or already compressed bytes)
PROBE_WINDOW = 1 << 16
PROBE_LEVEL = 3
PROBE_GAIN = 0.01
READ_CHUNK = 1 << 20  # a reader reads at most this much before checking what it got


class FormatError(ValueError):
    """The input is not a valid .mgz file (or is damaged)."""


class ModelMismatch(ValueError):
    """The model at hand is not the one the file was compressed with."""


class VerifyError(RuntimeError):
    """A frame just written did not decode to its input (compress_stream(verify=True))."""


@dataclass
class Segment:
    method: int
    length: int  # original bytes
    payload: int  # body bytes: the length (stored), the zstd frame's size, 0 (model)


@dataclass
class Frame:
    """The header of one frame."""

    index: int
    length: int  # original bytes of the frame
    crc: int  # CRC-32 of the frame's original bytes
    segment_size: int
    segments: list[Segment]
    blocks: list[int]  # stream bytes of each block that holds model segments
    flags: int = 0
    stage: int = STAGE_NONE  # adaptive stage version of the model streams (0: none)
    model_name: str = ""
    model_hash: bytes = b""  # the model's SHA-256, its first MODEL_ID_BYTES (format 4)
    lanes: int = 1  # G: segments per block
    size: int = 0  # header bytes, both CRCs included

    @property
    def last(self) -> bool:
        return bool(self.flags & FLAG_LAST)

    @property
    def body(self) -> int:
        return sum(s.payload for s in self.segments) + sum(self.blocks)

    def block_members(self) -> list[list[int]]:
        """For each block in the block table, the indices of its model segments."""
        return _block_members([s.method for s in self.segments], self.lanes)


@dataclass
class FileInfo:
    """What `scan` finds in a .mgz file: its frames' headers."""

    frames: list[Frame]
    size: int  # bytes of the file
    segments: list[Segment] = field(default_factory=list)

    @property
    def length(self) -> int:
        return sum(f.length for f in self.frames)

    @property
    def header_bytes(self) -> int:
        return sum(f.size for f in self.frames)

    @property
    def model_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.flags & FLAG_MODEL]


def _block_members(methods: list[int], lanes: int) -> list[list[int]]:
    groups = []
    for b0 in range(0, len(methods), lanes):
        members = [i for i in range(b0, min(b0 + lanes, len(methods))) if methods[i] == MODEL]
        if members:
            groups.append(members)
    return groups


# ------------------------------------------------------------------------------ header


def varint(n: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant first, high bit = more."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def pack_header(f: Frame) -> bytes:
    """The header bytes of a frame (both CRCs computed here from f.crc and the bytes)."""
    out = bytearray(MAGIC)
    out += bytes([VERSION, f.flags]) + varint(f.index) + varint(f.length)
    if f.length:
        out += varint(f.segment_size)
        if f.flags & (FLAG_MODEL | FLAG_STAGE):
            out.append(f.stage)
        if f.flags & FLAG_MODEL:
            name = f.model_name.encode()[:MAX_NAME]
            out += bytes([len(name)]) + name + f.model_hash + varint(f.lanes)
        i = 0
        while i < len(f.segments):  # runs of one method: (run length - 1) << 2 | method
            method = f.segments[i].method
            j = i + 1
            while j < len(f.segments) and f.segments[j].method == method:
                j += 1
            out += varint((j - i - 1) << 2 | method)
            if method in (ZSTD, STAGE):
                for seg in f.segments[i:j]:
                    out += varint(seg.payload)
            i = j
        for b in f.blocks:
            out += varint(b)
        out += struct.pack("<I", f.crc)
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


class _Source:
    """The bytes of a binary stream, read as they are needed and never more than
    READ_CHUNK at a time beyond what arrived, so a forged length costs nothing."""

    def __init__(self, f: BinaryIO):
        self.f, self.pending, self.log = f, b"", None

    def take(self, n: int) -> bytes:
        got = bytearray(self.pending[:n])
        self.pending = self.pending[n:]
        while len(got) < n:
            chunk = self.f.read(min(n - len(got), READ_CHUNK))
            if not chunk:
                raise FormatError("truncated file")
            got += chunk
        if self.log is not None:
            self.log += got
        return bytes(got)

    def skip(self, n: int) -> None:
        """Pass over n bytes (seeking where the stream can)."""
        k = min(n, len(self.pending))
        self.pending, n = self.pending[k:], n - k
        if n and self.f.seekable():
            pos = self.f.tell()
            end = self.f.seek(0, io.SEEK_END)
            self.f.seek(min(pos + n, end))
            if pos + n > end:
                raise FormatError("truncated file")
            return
        log, self.log = self.log, None
        while n:
            k = min(n, READ_CHUNK)
            self.take(k)
            n -= k
        self.log = log

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self, limit: int) -> int:
        """A minimal LEB128 integer ≤ limit (< 2^63), else FormatError."""
        n = shift = 0
        for i in range(9):
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if b == 0 and i:
                    raise FormatError("corrupt header (integer not in its shortest form)")
                if n > limit:
                    raise FormatError("corrupt header (a length beyond the format's limits)")
                return n
            shift += 7
        raise FormatError("corrupt header (integer too long)")

    def peek(self, n: int) -> bytes:
        """Up to n next bytes, left unread."""
        while len(self.pending) < n:
            chunk = self.f.read(n - len(self.pending))
            if not chunk:
                break
            self.pending += chunk
        return self.pending[:n]

    def at_end(self) -> bool:
        if not self.pending:
            self.pending = self.f.read(1)
        return not self.pending


def read_frame(src: _Source, index: int) -> Frame:
    """Parse and validate the header of frame `index`. Every count and length is checked
    against the format's limits before anything is sized by it. Raises FormatError."""
    if src.peek(len(MAGIC)) != MAGIC:
        raise FormatError("not a megazip file (bad magic)")
    src.log = bytearray()
    src.take(len(MAGIC))
    version, flags = src.take(2)
    if version not in READ_VERSIONS:
        if version in OLD_FORMATS:
            raise FormatError(
                f"format version {version} is not read by this megazip (format {VERSION}); "
                f"decompress it with {OLD_FORMATS[version]}"
            )
        raise FormatError(f"unsupported format version {version} (this megazip reads {VERSION})")
    if flags & ~KNOWN_FLAGS or (version < 3 and flags & FLAG_STAGE):
        raise FormatError(f"unsupported feature flags {flags:#04x}")
    got = src.varint(1 << 62)
    if got != index:
        raise FormatError(f"frame {got} found where frame {index} belongs: the file is damaged")
    length = src.varint(MAX_FRAME)
    fr = Frame(index, length, 0, 0, [], [], flags)
    if length == 0:
        if index or flags != FLAG_LAST:
            raise FormatError("corrupt header (an empty frame that is not a whole empty file)")
    else:
        fr.segment_size = src.varint(length)
        if fr.segment_size == 0:
            raise FormatError("corrupt header (segment size 0)")
        count = -(-length // fr.segment_size)
        if count > MAX_SEGMENTS:
            raise FormatError("corrupt header (more segments than the format allows)")
        if flags & (FLAG_MODEL | FLAG_STAGE):
            fr.stage = src.byte()
            _check_stage(fr.stage)
            if flags & FLAG_STAGE and fr.stage == STAGE_NONE:
                raise FormatError("corrupt header (stage segments without a stage version)")
        if flags & FLAG_MODEL:
            fr.model_name = src.take(src.byte()).decode(errors="replace")
            fr.model_hash = src.take(MODEL_ID_BYTES if version >= 4 else 32)
            fr.lanes = src.varint(MAX_LANES)
            if fr.lanes == 0:
                raise FormatError("corrupt header (0 lanes per block)")
        previous = -1
        while len(fr.segments) < count:
            left = count - len(fr.segments)
            if version >= 4:  # a run: (its length - 1) << 2 | method, a new method each
                run = src.varint((left - 1) << 2 | 3)
                method, n = run & 3, (run >> 2) + 1
                if method == previous:
                    raise FormatError("corrupt header (segment table)")
                previous = method
            else:
                method, n = src.byte(), 1
            for _ in range(n):
                seg_len = min(fr.segment_size, length - len(fr.segments) * fr.segment_size)
                fr.segments.append(Segment(method, seg_len, _payload(src, flags, method, seg_len)))
        members = fr.block_members()
        if bool(members) != bool(flags & FLAG_MODEL):
            raise FormatError("corrupt header (model flag without model segments)")
        if any(s.method == STAGE for s in fr.segments) != bool(flags & FLAG_STAGE):
            raise FormatError("corrupt header (stage flag without stage segments)")
        for group in members:
            lane_bytes = sum(fr.segments[i].length for i in group)
            size = src.varint(lane_bytes)  # a stream is never longer than its lanes
            # with the stage: a record length and at least one code byte; without: 32-bit words
            bad = size < STAGE_MIN_PAYLOAD if fr.stage else size % 4
            if bad or size * MAX_RATIO < lane_bytes:
                raise FormatError("corrupt header (stream size)")
            fr.blocks.append(size)
        (fr.crc,) = struct.unpack("<I", src.take(4))
    header = bytes(src.log)
    src.log = None
    (crc,) = struct.unpack("<I", src.take(4))
    if crc != zlib.crc32(header):
        raise FormatError("corrupt header (CRC mismatch)")
    fr.size = len(header) + 4
    return fr


def _payload(src: _Source, flags: int, method: int, seg_len: int) -> int:
    """The body bytes of a segment of `method` and `seg_len` bytes (for zstd and stage
    segments, read from the segment table). Raises FormatError."""
    if method == STORED:
        return seg_len
    if method == ZSTD:
        payload = src.varint(seg_len - 1)  # smaller than storing, or not chosen
        if payload == 0:
            raise FormatError("corrupt header (empty zstd payload)")
        return payload
    if method == MODEL and flags & FLAG_MODEL:
        return 0
    if method == STAGE and flags & FLAG_STAGE:
        payload = src.varint(seg_len - 1)  # as zstd: smaller than storing
        if payload < STAGE_MIN_PAYLOAD or payload * MAX_RATIO < seg_len:
            raise FormatError("corrupt header (stage payload size)")
        return payload
    raise FormatError("corrupt header (segment table)")


def frame_memory(length: int, lanes: int, config, kv_bytes: int = 4) -> int:
    """An upper bound, in bytes, of what a reader allocates to decode a frame of `length`
    original bytes whose blocks have `lanes` lanes, with a model of `config` whose KV
    caches hold `kv_bytes`-byte elements: the frame's data three times over (body,
    segments, output), decoded bytes and history for B lanes of padded length T (B * T
    <= 2 * length + B * P), the adaptive stage's per-lane and shared state, and the
    model's KV caches (2 * layers * (2 * window - 1) * global_dim elements per lane)."""
    B = min(lanes, MAX_LANES)
    lane_bytes = 2 * length + B * config.patch_size
    kv = 2 * config.global_layers * (2 * config.window - 1) * config.global_dim * kv_bytes
    return 3 * length + 2 * lane_bytes + B * (STATE_PER_LANE + kv) + STATE_SHARED


def _check_stage(stage: int) -> None:
    from .modelspec import ADAPTIVE_VERSION

    if stage in OLD_STAGES:
        raise FormatError(
            f"this file was coded with version {stage} of the adaptive stage: decompress it "
            f"with megazip {OLD_STAGES[stage]}"
        )
    if stage not in (STAGE_NONE, ADAPTIVE_VERSION):
        raise FormatError(
            f"this file was coded with version {stage} of the adaptive stage, which this "
            f"megazip does not decode (it decodes version {ADAPTIVE_VERSION})"
        )


def _frames(src: _Source):
    """Yield the header of every frame of a file (and of files concatenated after it),
    leaving the source at the frame's body; the caller must consume the body."""
    index = 0
    while True:
        fr = read_frame(src, index)
        yield fr
        index += 1
        if fr.last:
            if src.at_end():
                return
            if src.peek(len(MAGIC)) != MAGIC:
                raise FormatError("trailing garbage after the last frame")
            index = 0  # another .mgz file follows (cat a.mgz b.mgz), as with zstd


def scan(blob_or_file: bytes | BinaryIO) -> FileInfo:
    """The headers of every frame (bodies skipped, not decoded). Raises FormatError."""
    f = io.BytesIO(blob_or_file) if isinstance(blob_or_file, (bytes, bytearray)) else blob_or_file
    src = _Source(f)
    frames, size = [], 0
    for fr in _frames(src):
        src.skip(fr.body)
        frames.append(fr)
        size += fr.size + fr.body
    return FileInfo(frames, size, [s for fr in frames for s in fr.segments])


# ------------------------------------------------------------------------------- write


def default_segment_size(n: int, lanes: int) -> int:
    """Segments long enough for context, numerous enough to fill `lanes` lanes."""
    size = max(MIN_SEGMENT, -(-n // lanes))
    return min(MAX_FRAME, -(-size // SEGMENT_ALIGN) * SEGMENT_ALIGN)


def default_layout(n: int) -> tuple[int, int]:
    """(segment size, lanes per block) for a frame of n bytes: segments of the size
    LAYOUT_SEGMENTS gives for n, one block below 2 * BLOCK_BYTES, else one block per
    whole BLOCK_BYTES, the segments spread evenly."""
    seg = next((size for limit, size in LAYOUT_SEGMENTS if n <= limit), LAYOUT_SEGMENT)
    seg = -(-seg // SEGMENT_ALIGN) * SEGMENT_ALIGN
    blocks = max(1, n // BLOCK_BYTES)
    count = max(1, -(-n // seg))
    return seg, min(MAX_LANES, -(-count // blocks))


def default_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def compress(data: bytes, model=None, **options) -> bytes:
    """Compress `data` (see compress_stream for the options) to .mgz bytes."""
    out = io.BytesIO()
    compress_stream(io.BytesIO(bytes(data)), out, model, **options)
    return out.getvalue()


def compress_stream(
    fin: BinaryIO,
    fout: BinaryIO,
    model=None,
    *,
    segment_size: int | None = None,
    lanes: int | None = None,
    frame_size: int | None = None,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    stats: dict | None = None,
    adaptive: bool = True,
    verify: bool = False,
    threads: int | None = 1,
) -> int:
    """Compress the stream `fin` into `fout`, frame by frame, with a model (shipped name,
    checkpoint path or IntMegabyte; default: the default model, loaded only if a frame
    needs it), followed by the adaptive stage unless adaptive=False. Memory is bounded by
    the frame size. Returns the bytes written. `stats`, if given, is filled with:
    model_bits (ideal code length of the model segments under the final tables),
    prior_bits (the same under the model alone), model_bytes (their coded size), methods
    (of each segment), header_bytes, frames, zstd_bytes (zstd -19 of each frame; the fast
    level for frames the model was not tried on) and length. With verify, every frame is
    decoded again before it is written and VerifyError raised if it differs. The layout
    is default_layout's unless `segment_size` or `lanes` is given (lanes alone:
    default_segment_size; a segment size alone: DEFAULT_LANES lanes). `threads` (None:
    every core) worker processes code a frame's blocks in parallel, and with threads > 1
    the model runs a chunk ahead of the adaptive stage; the bytes are the same for any
    number."""
    size = frame_size or FRAME_SIZE
    if segment_size is not None:
        if not 0 < segment_size <= MAX_FRAME:
            raise ValueError("segment size out of range")
        size = min(size, segment_size * MAX_SEGMENTS)
    if not 0 < size <= MAX_FRAME or not 0 < (lanes or 1) <= MAX_LANES:
        raise ValueError("frame size or lane count out of range")
    writer = _Writer(model, segment_size, lanes, device, progress, adaptive, verify, threads)
    cur, index, written = _read_full(fin, size), 0, 0
    while True:
        nxt = _read_full(fin, size) if len(cur) == size else b""
        blob = writer.frame(cur, index, last=not nxt)
        fout.write(blob)
        written += len(blob)
        if not nxt:
            break
        cur, index = nxt, index + 1
    if stats is not None:
        stats.update(writer.stats, frames=index + 1)
    return written


def _read_full(f: BinaryIO, n: int) -> bytes:
    """Up to n bytes: fewer only at the end of the stream."""
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def incompressible(data: bytes) -> bool:
    """The quick "the model cannot help here" decision: zstd at a fast level removes less
    than PROBE_GAIN of every PROBE_WINDOW of `data` (random or compressed bytes)."""
    z = zstandard.ZstdCompressor(level=PROBE_LEVEL)
    for i in range(0, len(data), PROBE_WINDOW):
        w = data[i : i + PROBE_WINDOW]
        if len(z.compress(w)) < len(w) * (1 - PROBE_GAIN):
            return False
    return True


class _Writer:
    """Codes frames; loads the model the first time a frame needs it."""

    def __init__(
        self, model, segment_size, lanes, device, progress, adaptive, verify=False, threads=1
    ):
        self.model, self.segment_size, self.lanes = model, segment_size, lanes
        self.device, self.progress, self.adaptive = device, progress, adaptive
        self.verify, self.threads = verify, threads
        self.int_model = self.name = None
        self.stats = dict(
            model_bits=0.0,
            prior_bits=0.0,
            model_bytes=0,
            methods=[],
            header_bytes=0,
            zstd_bytes=0,
            length=0,
        )

    def frame(self, data: bytes, index: int, last: bool) -> bytes:
        st = self.stats
        st["length"] += len(data)
        crc = zlib.crc32(data)
        flags = FLAG_LAST if last else 0
        if not data:
            fr = Frame(index, 0, 0, 0, [], [], flags)
            payloads: list[bytes] = []
            streams: list[bytes] = []
        elif incompressible(data):
            fr, payloads = self._plain(data, index, crc, flags)
            streams = []
        else:
            fr, payloads, streams = self._modelled(data, index, crc, flags)
        header = pack_header(fr)
        st["header_bytes"] += len(header)
        st["methods"] += [METHOD_NAMES[s.method] for s in fr.segments]
        st["model_bytes"] += sum(fr.blocks)
        blob = header + b"".join(payloads) + b"".join(streams)
        if self.verify:
            src = _Source(io.BytesIO(blob))
            fr = read_frame(src, index)
            again = _decode_frame(fr, src, self.int_model, self.device, None, {}, self.threads)
            if again != data:
                raise VerifyError(f"frame {index} does not decode to its input")
        return blob

    def _plain(self, data: bytes, index: int, crc: int, flags: int):
        """A frame the model is not tried on: each segment stored, or zstd at the fast
        level where that is smaller."""
        seg = min(self.segment_size or len(data), len(data))
        z = zstandard.ZstdCompressor(level=PROBE_LEVEL)
        segments, payloads = [], []
        for i in range(0, len(data), seg):
            piece = data[i : i + seg]
            zp = z.compress(piece)
            if len(zp) < len(piece):
                segments.append(Segment(ZSTD, len(piece), len(zp)))
                payloads.append(zp)
            else:
                segments.append(Segment(STORED, len(piece), len(piece)))
                payloads.append(piece)
            if self.progress:
                self.progress(len(piece))
        self.stats["zstd_bytes"] += len(z.compress(data))
        return Frame(index, len(data), crc, seg, segments, [], flags), payloads

    def _load(self):
        if self.int_model is None:
            from . import checkpoint

            self.int_model, self.name = _int_model(
                self.model if self.model is not None else checkpoint.DEFAULT_MODEL, self.device
            )
        return self.int_model

    def _modelled(self, data: bytes, index: int, crc: int, flags: int):
        from .modelspec import ADAPTIVE_VERSION

        adaptive, lanes, st = self.adaptive, self.lanes, self.stats
        if self.segment_size is None and lanes is None:
            seg, lanes = default_layout(len(data))
        else:
            lanes = lanes or DEFAULT_LANES
            seg = self.segment_size or default_segment_size(len(data), lanes)
        seg = min(seg, len(data))
        pieces = [data[i : i + seg] for i in range(0, len(data), seg)]
        zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        whole = None  # zstd -19 of the whole frame, computed once
        staging = adaptive and self.segment_size is None and self.lanes is None
        head_cost = None  # the stage-first check's (head bytes, stage stream bytes)
        if staging and len(data) >= STAGE_FIRST_MIN:
            from .adaptive import encode_stage

            head = data[: max(STAGE_FIRST_MIN, len(data) // 8)]
            # the stage stops as soon as the head cannot pass: at a quarter or a half of
            # it, once its output has reached the whole head's allowance
            allowance = -(-STAGE_FIRST_BITS * len(head) // 8000)
            quarters = tuple((len(head) * q // 4, allowance) for q in (1, 2))
            gave_up: list = []
            head_stream = encode_stage(head, quarters, gave_up)
            # (bytes coded, stream bytes then): the stage's cost of the frame's start
            head_cost = (len(head), len(head_stream)) if head_stream else gave_up[0]
            if head_stream and 8000 * len(head_stream) < STAGE_FIRST_BITS * len(head):
                whole = zc.compress(data)
                zstd_frame = _zstd_frame(index, data, crc, flags, whole)
                staged = self._staged(data, index, crc, flags, None, seg, frame_bytes(*zstd_frame))
                if staged is not None:
                    st["zstd_bytes"] += len(whole)
                    return staged
                if len(whole) * MAX_RATIO < len(data):  # zstd is within 1/256 of nothing
                    st["zstd_bytes"] += len(whole)
                    return zstd_frame
        zpieces = [zc.compress(p) for p in pieces]
        chosen: list[int] = []
        blocks, streams = [], []
        model_bits = prior_total = 0.0
        groups = [
            list(range(b0, min(b0 + lanes, len(pieces)))) for b0 in range(0, len(pieces), lanes)
        ]
        jobs = [([pieces[i] for i in g], [zpieces[i] for i in g], adaptive) for g in groups]
        int_model = self._load()
        results = _run_blocks(_code_block_job, jobs, int_model, self.threads, self.progress)
        cost = [0.0] * len(pieces)  # each segment's bytes in the model frame (estimated)
        for idx, (local, stream, bits, prior) in zip(groups, results, strict=True):
            members = [idx[j] for j in local]
            for i, b in zip(members, bits, strict=True):
                cost[i] = b / 8 + STREAM_OVERHEAD
            lane_bytes = sum(len(pieces[i]) for i in members)
            if adaptive:
                stream = pad_to_ratio(stream, lane_bytes)
            if not lane_bytes <= len(stream) * MAX_RATIO or len(stream) > lane_bytes:
                members = []  # outside what a reader accepts (FORMAT.md, "Limits")
            if members:
                blocks.append(len(stream))
                streams.append(stream)
                model_bits += sum(bits)
                prior_total += sum(prior)
            chosen += [MODEL if i in members else _classical(pieces[i], zpieces[i]) for i in idx]
        payloads = [
            {MODEL: b"", ZSTD: zpieces[i], STORED: pieces[i]}[m] for i, m in enumerate(chosen)
        ]
        segments = [Segment(m, len(pieces[i]), len(payloads[i])) for i, m in enumerate(chosen)]
        whole = zc.compress(data) if whole is None else whole
        st["zstd_bytes"] += len(whole)
        fr = Frame(index, len(data), crc, seg, segments, blocks, flags)
        if blocks:
            fr.flags |= FLAG_MODEL
            fr.stage = ADAPTIVE_VERSION if adaptive else STAGE_NONE
            fr.model_name = self.name
            fr.model_hash = bytes.fromhex(int_model.content_hash())[:MODEL_ID_BYTES]
            fr.lanes = lanes
        # the frames compared whole, headers included (a model frame names its model)
        zstd_frame = _zstd_frame(index, data, crc, flags, whole)
        total, zstd_total = frame_bytes(fr, payloads, streams), frame_bytes(*zstd_frame)
        for i, m in enumerate(chosen):
            if m != MODEL:
                cost[i] = len(payloads[i])
        if zstd_total < total:
            cost = [len(whole) * len(p) / len(data) for p in pieces]
        if staging:
            best = min(total, zstd_total)
            staged = self._staged(data, index, crc, flags, cost, seg, best, head_cost)
            if staged is not None:
                return staged
        if zstd_total < total:  # zstd over the whole frame beats the segmented result
            return zstd_frame
        st["model_bits"] += model_bits
        st["prior_bits"] += prior_total
        return fr, payloads, streams

    def _staged(self, data, index, crc, flags, cost, seg, best, head_cost=None):
        """The frame as stage segments (adaptive.encode_stage), if it comes out smaller
        than `best` bytes (header included: frame_bytes), else None. `cost`: each
        model-frame segment's bytes (segments of `seg` bytes), for the stage's early
        give-up (STAGE_CHECKS; None: no model frame to compare with, no give-up);
        `head_cost`: (bytes, stream bytes) of the stage alone on the frame's first bytes,
        already known (STAGE_HEAD_EARLY). It runs after the model frame, not beside it:
        both at once held both sets of tables (alice29.txt: peak RSS 451 -> 674 MB)."""
        from .modelspec import ADAPTIVE_VERSION

        n = len(data)
        pieces = stage_pieces(data)
        size = len(pieces[0])
        acc = [0.0]
        for c in cost or ():
            acc.append(acc[-1] + c)

        def spent(x: int) -> float:  # the model frame's bytes for data[:x], interpolated
            k = min(x // seg, len(cost) - 1)
            return acc[k] + cost[k] * (x - k * seg) / max(1, min(seg, n - k * seg))

        if cost is not None and head_cost is not None and head_cost[0] <= size:
            f = head_cost[0] / size
            pm = STAGE_HEAD_EARLY
            for frac, permille in STAGE_CHECKS:
                pm = permille if f >= frac else pm
            pm = 1000 if f >= 1 else pm
            if head_cost[1] * 1000 > spent(head_cost[0]) * pm + 16000:
                return None
        jobs = []
        for a in range(0, n, size):
            m = min(size, n - a)
            limits = ()
            if cost is not None and m >= STAGE_CHECK_MIN:
                limits = tuple(
                    (int(m * f), int((spent(a + int(m * f)) - spent(a)) * pm / 1000) + 16)
                    for f, pm in STAGE_CHECKS
                )
            jobs.append(([data[a : a + m]], limits))
        streams = _run_blocks(_stage_encode_job, jobs, None, self.threads, None)
        if any(s is None for s in streams):
            return None
        segments, payloads = [], []
        for piece, stream in zip(pieces, streams, strict=True):
            stream = pad_to_ratio(stream, len(piece))
            if len(stream) < len(piece) and len(stream) * MAX_RATIO >= len(piece):
                segments.append(Segment(STAGE, len(piece), len(stream)))
                payloads.append(stream)
                continue
            # outside what a reader accepts (FORMAT.md, "Limits"), or no smaller than
            # storing: zstd or stored instead
            zpiece = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(piece)
            method = _classical(piece, zpiece)
            segments.append(Segment(method, len(piece), len(zpiece if method == ZSTD else piece)))
            payloads.append(zpiece if method == ZSTD else piece)
        fr = Frame(index, len(data), crc, size, segments, [], flags)
        if any(s.method == STAGE for s in segments):
            fr.flags |= FLAG_STAGE
            fr.stage = ADAPTIVE_VERSION
        if frame_bytes(fr, payloads, []) >= best:
            return None
        self.stats["stage_bytes"] = self.stats.get("stage_bytes", 0) + sum(
            len(p) for p, s in zip(payloads, segments, strict=True) if s.method == STAGE
        )
        return fr, payloads, []


def pad_to_ratio(stream: bytes, n: int) -> bytes:
    """A binary arithmetic code `stream` (a stage segment's payload, a model block's stream
    with the adaptive stage) of `n` bytes, padded with FF bytes to the ⌈n / MAX_RATIO⌉
    bytes a reader requires. The decoder reads FF beyond the end of a code anyway, so the
    padded stream decodes to the same bytes: data that codes to almost nothing (a long
    run, a regular table) costs 1/256 of its length instead of falling back to zstd."""
    return stream + b"\xff" * max(0, -(-n // MAX_RATIO) - len(stream))


def frame_bytes(fr: Frame, payloads: list[bytes], streams: list[bytes]) -> int:
    """The bytes a frame takes in the file: its header, payloads and streams."""
    return len(pack_header(fr)) + sum(map(len, payloads)) + sum(map(len, streams))


def _zstd_frame(index: int, data: bytes, crc: int, flags: int, whole: bytes):
    """The frame of `data` as one zstd segment `whole`, with its payloads and streams."""
    one = Segment(ZSTD, len(data), len(whole))
    return Frame(index, len(data), crc, len(data), [one], [], flags), [whole], []


def stage_pieces(data: bytes) -> list[bytes]:
    """The stage segments of a frame: one per whole BLOCK_BYTES (at least one), of equal
    sizes in multiples of SEGMENT_ALIGN (the last one shorter)."""
    n = len(data)
    per = -(-n // max(1, n // BLOCK_BYTES))
    size = min(n, -(-per // SEGMENT_ALIGN) * SEGMENT_ALIGN)
    return [data[a : a + size] for a in range(0, n, size)]


def _classical(piece: bytes, zpiece: bytes) -> int:
    """STORED or ZSTD, whichever is smaller (STORED on a tie)."""
    return ZSTD if len(zpiece) < len(piece) else STORED


def _code_block(int_model, pieces, zpieces, idx, adaptive, progress, threads=None):
    """Code the segments `idx` of one block: (model members, their stream, their bits
    under the final tables, their bits under the prior alone).

    A segment is a member if its model cost (bits / 8 + STREAM_OVERHEAD bytes, under the
    stream actually written) is below both its zstd and stored sizes (ties go to zstd or
    storing). The adaptive stage's record length depends on all of a block's lanes, so
    re-coding without the segments that lost can change the members' costs: the block is
    re-coded, and the choice re-checked, until every member still wins (members only
    leave, so this ends; the same input always gives the same result). A re-coding costs
    a whole pass of the model: where the segments that lost would save less than
    1 / RECODE_MIN_GAIN of the stream together (ptt5: 32 bytes of 25 KB, two passes),
    they stay members instead."""
    members, coded = list(idx), None
    while members:
        prior: list[float] = []
        stream, bits = encode_block(
            int_model,
            [pieces[i] for i in members],
            progress=progress if coded is None else None,
            adaptive=adaptive,
            prior_bits=prior,
            threads=threads,
        )
        coded = members
        alternative = {i: min(len(zpieces[i]), len(pieces[i])) for i in coded}
        members = [
            i for i, b in zip(coded, bits, strict=True) if b / 8 + STREAM_OVERHEAD < alternative[i]
        ]
        excess = sum(
            b / 8 + STREAM_OVERHEAD - alternative[i]
            for i, b in zip(coded, bits, strict=True)
            if i not in members
        )
        if members == coded or (members and excess * RECODE_MIN_GAIN < len(stream)):
            return coded, stream, bits, prior
    return [], b"", [], []


def encode_block(*args, **kwargs):
    """coder.encode_block, imported on first use (torch, numba: only for model coding)."""
    from . import coder

    return coder.encode_block(*args, **kwargs)


def _code_block_job(int_model, job, progress, threads=1):
    pieces, zpieces, adaptive = job
    return _code_block(
        int_model, pieces, zpieces, list(range(len(pieces))), adaptive, progress, threads
    )


def _decode_block_job(int_model, job, progress, threads=1):
    from .coder import CorruptStream, decode_block

    stream, lengths, adaptive = job
    try:
        return decode_block(
            int_model, stream, lengths, progress, adaptive=adaptive, lane_threads=threads or 1
        )
    except CorruptStream as e:
        raise FormatError(str(e)) from None


def _stage_encode_job(_int_model, job, progress, _threads=1):
    """adaptive.encode_stage of job ([piece], limits): the stream or None (gave up)."""
    from .adaptive import encode_stage

    (piece,), limits = job
    stream = encode_stage(piece, limits)
    if progress:
        progress(len(piece))
    return stream


def _stage_decode_job(_int_model, job, progress, _threads=1):
    from .adaptive import decode_stage

    stream, (length,) = job
    try:
        data = decode_stage(stream, length)
    except ValueError as e:
        raise FormatError(str(e)) from None
    if progress:
        progress(length)
    return data


# ----------------------------------------------------------------------- worker processes
# Blocks are independent, so `threads` worker processes code them in parallel, each on
# one thread (a second thread pool inside a worker would only fight the others: OpenMP
# barriers on a busy machine, numba's pool slowing torch's int8 GEMM). Each worker gets
# the integer model itself (pickled: the very tables of this process). The bytes do not
# depend on the number of workers.
PARALLEL_MIN_BYTES = 1 << 19  # less model input than this: no workers (their start costs
# seconds: torch, numba and the model load in each)
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}
_WORKER: dict = {}


@contextlib.contextmanager
def blas_one_thread():
    """Within: numpy's BLAS runs one thread; the caller's setting is restored on exit.
    The coder runs its own threads (-T), and BLAS's pool on top of them spins on busy
    cores: with the second core busy, the global model's small (8, 247, 32) @ (8, 32,
    128) product took 58 ms instead of 0.2 ms in megazip.compress."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _worker_init(int_model) -> None:
    if int_model is not None and not getattr(int_model, "numpy_api", False):  # torch
        import torch

        torch.set_num_threads(1)
    _WORKER["model"] = int_model


def _worker_run(fn, job):
    return fn(_WORKER["model"], job, None)


def _job_bytes(fn, job) -> int:
    return sum(map(len, job[0])) if fn in (_code_block_job, _stage_encode_job) else sum(job[1])


def _run_blocks(fn, jobs, int_model, threads, progress):
    """[fn(int_model, job, progress, threads) for job in jobs], in worker processes when
    there are several jobs, threads > 1 (None: every core) and enough bytes, else here
    (where threads > 1 may still run the model a chunk ahead)."""
    n = default_threads() if threads is None else max(1, threads)
    workers = min(n, len(jobs))
    if workers <= 1 or sum(_job_bytes(fn, job) for job in jobs) < PARALLEL_MIN_BYTES:
        with blas_one_thread():
            return [fn(int_model, job, progress, n) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    saved = {k: os.environ.get(k) for k in ONE_THREAD_ENV}
    os.environ.update(ONE_THREAD_ENV)  # inherited by the workers as they start
    try:
        with ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(int_model,),
        ) as pool:
            futures = [pool.submit(_worker_run, fn, job) for job in jobs]
            results = []
            for job, f in zip(jobs, futures, strict=True):
                results.append(f.result())
                if progress:
                    progress(_job_bytes(fn, job))
            return results
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -------------------------------------------------------------------------------- read


def decompress(blob: bytes, model=None, **options) -> bytes:
    """Decompress .mgz bytes (see decompress_stream for the options)."""
    out = io.BytesIO()
    decompress_stream(io.BytesIO(blob), out, model, **options)
    return out.getvalue()


def decompress_stream(
    fin: BinaryIO,
    fout: BinaryIO,
    model=None,
    *,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    threads: int | None = 1,
) -> int:
    """Decompress the .mgz stream `fin` into `fout`, frame by frame: each frame is
    checked (CRC-32 of its bytes) before it is written, so nothing wrong is ever written;
    a later damaged frame raises after the good ones were. The model defaults to the one
    each frame names; a model whose content hash differs is refused (ModelMismatch).
    Raises FormatError for damaged input. Returns the bytes written. `threads` (None:
    every core) worker processes decode a frame's blocks in parallel."""
    src = _Source(fin)
    models: dict[bytes, object] = {}
    written = 0
    for fr in _frames(src):
        data = _decode_frame(fr, src, model, device, progress, models, threads)
        fout.write(data)
        written += len(data)
    return written


def _decode_frame(fr: Frame, src: _Source, model, device, progress, models, threads=1):
    members = fr.block_members()
    int_model = _model_for(fr, model, device, models) if members else None
    out: list[bytes] = [b""] * len(fr.segments)
    staged, stage_jobs = [], []
    for i, s in enumerate(fr.segments):
        if s.method == MODEL:
            continue
        payload = src.take(s.payload)
        if s.method == STAGE:
            staged.append(i)
            stage_jobs.append((payload, [s.length]))
            continue
        out[i] = payload if s.method == STORED else _unzstd(payload, s.length)
        if progress:
            progress(s.length)
    decoded = _run_blocks(_stage_decode_job, stage_jobs, None, threads, progress)
    for i, seg in zip(staged, decoded, strict=True):
        out[i] = seg
    adaptive = fr.stage != STAGE_NONE
    jobs = [
        (src.take(size), [fr.segments[i].length for i in group], adaptive)
        for group, size in zip(members, fr.blocks, strict=True)
    ]
    results = _run_blocks(_decode_block_job, jobs, int_model, threads, progress)
    for group, lanes in zip(members, results, strict=True):
        for i, lane in zip(group, lanes, strict=True):
            out[i] = lane
    data = b"".join(out)
    if len(data) != fr.length or zlib.crc32(data) != fr.crc:
        raise FormatError("checksum mismatch: the file is damaged")
    return data


def _model_for(fr: Frame, model, device, models):
    """The integer model a frame needs (loaded once per file), or ModelNotFound /
    ModelMismatch naming the model and hash the frame needs."""
    from . import checkpoint

    key = fr.model_hash if model is None else b""
    if key not in models:
        try:
            models[key] = _int_model(model if model is not None else fr.model_name, device)[0]
        except checkpoint.ModelNotFound:
            raise checkpoint.ModelNotFound(
                f"this file needs model {fr.model_name!r} (hash {fr.model_hash.hex()[:16]}), "
                "which is not installed; pass --model PATH"
            ) from None
    int_model = models[key]
    have = int_model.content_hash()
    if bytes.fromhex(have)[: len(fr.model_hash)] != fr.model_hash:
        raise ModelMismatch(
            f"this file needs model {fr.model_name!r} with hash {fr.model_hash.hex()[:16]}, "
            f"but the model given has hash {have[:16]}"
        )
    return int_model


def _unzstd(payload: bytes, length: int) -> bytes:
    """The segment a zstd payload holds. Read through a stream reader, at most one byte
    beyond `length`: a damaged frame header that claims a huge content size costs no
    memory (ZstdDecompressor.decompress would allocate the claimed size)."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)) as r:
            data = r.read(length + 1)
    except zstandard.ZstdError as e:
        raise FormatError(f"corrupt zstd segment ({e})") from None
    if len(data) != length:
        raise FormatError("corrupt zstd segment (wrong length)")
    return data


MODEL_CACHE_SIZE = 4  # loaded integer models kept (by file and device), least recent out
_INT_MODELS: OrderedDict = OrderedDict()


def clear_model_cache() -> None:
    """Forget the integer models compress()/decompress() loaded by name or path (each
    holds its weights in memory; a later call loads them again)."""
    _INT_MODELS.clear()


def model_identity(model=None, device: str = "cpu") -> tuple[str, str]:
    """(name, content hash in hex) that a frame coded with `model` names (loads it)."""
    from . import checkpoint

    int_model, name = _int_model(model if model is not None else checkpoint.DEFAULT_MODEL, device)
    return name, int_model.content_hash()


def cuda_available() -> bool:
    """Whether a CUDA GPU is usable, importing torch only where one may be: without an
    NVIDIA device node (/dev/nvidia0, ...) the answer is no, at no cost."""
    import glob

    if not glob.glob("/dev/nvidia[0-9]*"):
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def _int_model(model, device: str):
    """(integer model on `device`, name for the header). On the CPU that is NpMegabyte
    (megazip/npmodel.py: numpy and numba, no torch import; MEGAZIP_CPU_MODEL=torch: the
    torch IntMegabyte, whose int8 GEMMs are faster on large inputs but whose import costs
    seconds), on CUDA the torch IntMegabyte; their tables are identical. A model object
    given (NpMegabyte or IntMegabyte) is used as it is on its own kind of device (an
    IntMegabyte on the CPU too, its kernels with it), else a converted copy: the caller's
    object is never changed. Models loaded by name or path are cached (at most
    MODEL_CACHE_SIZE, keyed by file, modification time and device; clear_model_cache()
    empties it)."""
    from . import checkpoint

    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    device = str(device)
    on_cpu = device == "cpu"
    if not isinstance(model, (str, os.PathLike)):  # a model object
        if getattr(model, "numpy_api", False):
            return (model if on_cpu else _to_torch(model, device)), "custom"
        if str(model.device) == device:
            return model, "custom"
        return model.to(device), "custom"
    path = checkpoint.int_model_path(model)
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0, device)
    if key in _INT_MODELS:
        _INT_MODELS.move_to_end(key)
    else:
        if on_cpu and os.environ.get("MEGAZIP_CPU_MODEL", "numpy") != "torch":
            from .npmodel import NpMegabyte

            if not path.is_file():
                raise checkpoint.ModelNotFound(
                    f"model {model} has no integer coding model ({path.name})"
                )
            _INT_MODELS[key] = NpMegabyte.load(path)
        else:
            _INT_MODELS[key] = checkpoint.load_int_model(model).to(device)
        while len(_INT_MODELS) > MODEL_CACHE_SIZE:
            _INT_MODELS.popitem(last=False)
    name = str(model).rstrip("/").split("/")[-1]
    return _INT_MODELS[key], name.removesuffix(".json")


def _to_torch(np_model, device: str):
    """The torch IntMegabyte of an NpMegabyte, on `device`."""
    import torch

    from .intmodel import IntMegabyte

    tensors = {k: torch.from_numpy(v.copy()) for k, v in np_model.tensors.items()}
    return IntMegabyte(np_model.config, tensors, dict(np_model.ints)).to(device)
