"""The .mgz container: `compress(bytes) -> bytes` and `decompress(bytes) -> bytes`.

Layout (little-endian; docs/FORMAT.md is the byte-for-byte reference):

    header   magic "\\x89MGZ", version, flags, model name, model hash, original length,
             sha256 of the original, segment size, lanes per block, segment table,
             block table, CRC-32 of the header
    body     payloads of stored and zstd segments in segment order, then one range-coder
             stream per block of model-coded segments

The input is cut into segments of `segment_size` bytes. Each segment is stored raw,
compressed with zstd, or coded by the model, whichever is smallest; model segments are
grouped into blocks of consecutive segment indices [b*G, (b+1)*G), and each block's model
segments are coded in lockstep as the lanes of one stream. When zstd -19 of the whole
input beats all that, the file is a single zstd segment: megazip is never worse than zstd
-19 (or storing) by more than its header.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import zstandard

from . import checkpoint
from .adaptive import ADAPTIVE_VERSION
from .coder import decode_block, encode_block
from .intmodel import IntMegabyte

MAGIC = b"\x89MGZ"
VERSION = 1
FLAG_ADAPTIVE_V1 = 1  # retired: version 1 of the adaptive stage (refused with a clear error)
FLAG_ADAPTIVE_V2 = 4  # retired: version 2 of the adaptive stage (refused with a clear error)
FLAG_ADAPTIVE = 8  # model segments use the adaptive stage (megazip/adaptive.py, version 3)
RETIRED_FLAGS = {FLAG_ADAPTIVE_V1: 1, FLAG_ADAPTIVE_V2: 2}  # flag -> adaptive stage version
KNOWN_FLAGS = FLAG_ADAPTIVE | FLAG_ADAPTIVE_V1 | FLAG_ADAPTIVE_V2
STORED, ZSTD, MODEL = 0, 1, 2
METHOD_NAMES = {STORED: "stored", ZSTD: "zstd", MODEL: "model"}
ZSTD_LEVEL = 19
MAX_SEGMENT = 1 << 26  # 64 MiB: largest segment a decoder accepts
MAX_LANES = 1 << 14
DEFAULT_LANES = 64
# Segments are at least 16 KiB: the adaptive stage learns from its own lane only, so
# longer lanes compress better (alice29.txt with tiny: 3.66 bits/byte at 4 KiB, 3.51 at
# 16 KiB, 3.29 at 64 KiB), while more lanes decode faster. --segment-size overrides.
MIN_SEGMENT = 16384
STREAM_OVERHEAD = 4  # bytes a model segment is assumed to cost beyond its ideal length


class FormatError(ValueError):
    """The input is not a valid .mgz file (or is damaged)."""


class ModelMismatch(ValueError):
    """The model at hand is not the one the file was compressed with."""


@dataclass
class Segment:
    method: int
    length: int  # original bytes
    payload: int  # stored/zstd payload bytes (0 for model segments)


@dataclass
class Header:
    model_name: str
    model_hash: bytes  # 32 bytes
    length: int
    sha256: bytes
    segment_size: int
    lanes: int  # G: segments per block
    segments: list[Segment]
    blocks: list[int]  # stream bytes of each block that holds model segments
    flags: int = 0
    size: int = 0  # header bytes, CRC included

    def block_members(self) -> list[list[int]]:
        """For each block in the block table, the indices of its model segments."""
        groups = []
        for b0 in range(0, len(self.segments), self.lanes):
            members = [
                i
                for i in range(b0, min(b0 + self.lanes, len(self.segments)))
                if self.segments[i].method == MODEL
            ]
            if members:
                groups.append(members)
        return groups


# ------------------------------------------------------------------------------ header


def _pack_header(h: Header) -> bytes:
    name = h.model_name.encode()[:255]
    out = bytearray(MAGIC)
    out += struct.pack("<BBB", VERSION, h.flags, len(name)) + name + h.model_hash
    out += struct.pack("<Q", h.length) + h.sha256
    out += struct.pack("<IHI", h.segment_size, h.lanes, len(h.segments))
    for s in h.segments:
        out += struct.pack("<BII", s.method, s.payload, s.length)
    out += struct.pack("<I", len(h.blocks))
    for b in h.blocks:
        out += struct.pack("<I", b)
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise FormatError("truncated file")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def read_header(blob: bytes) -> Header:
    """Parse and validate the header of a .mgz file. Raises FormatError."""
    r = _Reader(blob)
    if len(blob) < 4 or r.take(4) != MAGIC:
        raise FormatError("not a megazip file (bad magic)")
    version, flags, n = r.unpack("<BBB")
    if version != VERSION:
        raise FormatError(f"unsupported format version {version} (this megazip reads {VERSION})")
    if flags & ~KNOWN_FLAGS:
        raise FormatError(f"unsupported feature flags {flags:#04x}")
    for flag, old in RETIRED_FLAGS.items():
        if flags & flag:
            raise FormatError(
                f"this file was coded with version {old} of the adaptive stage, which this "
                f"megazip no longer decodes (it writes version {ADAPTIVE_VERSION})"
            )
    name = r.take(n).decode(errors="replace")
    model_hash = r.take(32)
    (length,) = r.unpack("<Q")
    sha = r.take(32)
    seg_size, lanes, count = r.unpack("<IHI")
    if not (0 < seg_size <= MAX_SEGMENT and 0 < lanes <= MAX_LANES):
        raise FormatError("corrupt header (segment size or lane count out of range)")
    if count * 9 > len(blob) - r.pos:  # never trust a count beyond what the file holds
        raise FormatError("truncated file")
    segments = []
    for _ in range(count):
        method, payload, seg_len = r.unpack("<BII")
        if method not in METHOD_NAMES or not 0 < seg_len <= seg_size:
            raise FormatError("corrupt header (segment table)")
        if method == MODEL and payload:
            raise FormatError("corrupt header (segment table)")
        segments.append(Segment(method, seg_len, payload))
    (nblocks,) = r.unpack("<I")
    if nblocks * 4 > len(blob) - r.pos:
        raise FormatError("truncated file")
    blocks = [r.unpack("<I")[0] for _ in range(nblocks)]
    if any(b % 4 for b in blocks):
        raise FormatError("corrupt header (stream size is not whole 32-bit words)")
    (crc,) = r.unpack("<I")
    if crc != zlib.crc32(blob[: r.pos - 4]):
        raise FormatError("corrupt header (CRC mismatch)")
    h = Header(name, model_hash, length, sha, seg_size, lanes, segments, blocks, flags, r.pos)
    if sum(s.length for s in segments) != length:
        raise FormatError("corrupt header (segment lengths do not add up)")
    if len(h.block_members()) != nblocks:
        raise FormatError("corrupt header (block table)")
    body = sum(s.payload for s in segments) + sum(blocks)
    if h.size + body != len(blob):
        raise FormatError("truncated file" if h.size + body > len(blob) else "trailing garbage")
    return h


# ------------------------------------------------------------------------------- codec


def default_segment_size(n: int, lanes: int, patch: int) -> int:
    """Segments long enough for context, numerous enough to fill `lanes` lanes."""
    size = max(MIN_SEGMENT, -(-n // lanes))
    return min(MAX_SEGMENT, -(-size // patch) * patch)


def compress(
    data: bytes,
    model: str | IntMegabyte = checkpoint.DEFAULT_MODEL,
    *,
    segment_size: int | None = None,
    lanes: int = DEFAULT_LANES,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    stats: dict | None = None,
    adaptive: bool = True,
) -> bytes:
    """Compress `data` with a model (shipped name, checkpoint path, or IntMegabyte),
    followed by the adaptive stage unless adaptive=False. `stats`, if given, is filled
    with: model_bits (ideal code length of the model segments under the final tables),
    prior_bits (the same under the model alone), model_bytes (their coded size),
    methods (of each segment) and header_bytes."""
    int_model, name = _int_model(model, device)
    data = bytes(data)
    seg = segment_size or default_segment_size(len(data), lanes, int_model.config.patch_size)
    if not 0 < seg <= MAX_SEGMENT or not 0 < lanes <= MAX_LANES:
        raise ValueError("segment size or lane count out of range")
    pieces = [data[i : i + seg] for i in range(0, len(data), seg)]
    zpieces = [zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(p) for p in pieces]
    segments, payloads, blocks, streams = [], [], [], []
    model_bits = prior_total = 0.0
    for b0 in range(0, len(pieces), lanes):
        idx = list(range(b0, min(b0 + lanes, len(pieces))))
        members, stream, bits, prior = _code_block(
            int_model, pieces, zpieces, idx, adaptive, progress
        )
        if members and len(stream) >= 1 << 32:
            raise ValueError("a block's stream exceeds 4 GiB: use fewer lanes or segments")
        if members:
            blocks.append(len(stream))
            streams.append(stream)
            model_bits += sum(bits)
            prior_total += sum(prior)
        for i in idx:
            method = MODEL if i in members else _classical(pieces[i], zpieces[i])
            payload = {MODEL: b"", ZSTD: zpieces[i], STORED: pieces[i]}[method]
            segments.append(Segment(method, len(pieces[i]), len(payload)))
            payloads.append(payload)
    header = Header(
        name,
        bytes.fromhex(int_model.content_hash()),
        len(data),
        hashlib.sha256(data).digest(),
        seg,
        lanes,
        segments,
        blocks,
        FLAG_ADAPTIVE if adaptive else 0,
    )
    blob = _pack_header(header) + b"".join(payloads) + b"".join(streams)
    whole = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    if 0 < len(data) <= MAX_SEGMENT and len(whole) < sum(len(p) for p in payloads) + sum(blocks):
        # zstd over the whole input beats the segmented result: one zstd segment
        one = Segment(ZSTD, len(data), len(whole)) if len(whole) < len(data) else None
        one = one or Segment(STORED, len(data), len(data))
        header = Header(
            name, header.model_hash, len(data), header.sha256, max(len(data), 1), 1, [one], []
        )
        body = whole if one.method == ZSTD else data
        blob = _pack_header(header) + body
        streams, model_bits, prior_total = [], 0.0, 0.0
    if stats is not None:
        hdr = read_header(blob)
        stats.update(
            model_bits=model_bits,
            prior_bits=prior_total,
            model_bytes=sum(hdr.blocks),
            methods=[METHOD_NAMES[s.method] for s in hdr.segments],
            header_bytes=hdr.size,
        )
    return blob


def _classical(piece: bytes, zpiece: bytes) -> int:
    """STORED or ZSTD, whichever is smaller (STORED on a tie)."""
    return ZSTD if len(zpiece) < len(piece) else STORED


def _code_block(int_model, pieces, zpieces, idx, adaptive, progress):
    """Code the segments `idx` of one block: (model members, their stream, their bits
    under the final tables, their bits under the prior alone).

    A segment is a member if its model cost (bits / 8 + STREAM_OVERHEAD bytes, under the
    stream actually written) is below both its zstd and stored sizes (ties go to zstd or
    storing). The adaptive stage's record length depends on all of a block's lanes, so
    re-coding without the segments that lost can change the members' costs: the block is
    re-coded, and the choice re-checked, until every member still wins (members only
    leave, so this ends; the same input always gives the same result)."""
    members, coded = list(idx), None
    while members:
        prior: list[float] = []
        stream, bits = encode_block(
            int_model,
            [pieces[i] for i in members],
            progress=progress if coded is None else None,
            adaptive=adaptive,
            prior_bits=prior,
        )
        coded = members
        members = [
            i
            for i, b in zip(coded, bits, strict=True)
            if b / 8 + STREAM_OVERHEAD < min(len(zpieces[i]), len(pieces[i]))
        ]
        if members == coded:
            return members, stream, bits, prior
    return [], b"", [], []


def decompress(
    blob: bytes,
    model: str | IntMegabyte | None = None,
    *,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """Decompress a .mgz blob. The model defaults to the one named in the header; a model
    whose content hash differs from the header's is refused (ModelMismatch). Raises
    FormatError for damaged input, including a checksum mismatch."""
    h = read_header(blob)
    members = h.block_members()
    int_model = None
    if members:
        try:
            int_model, _ = _int_model(model if model is not None else h.model_name, device)
        except checkpoint.ModelNotFound:
            raise checkpoint.ModelNotFound(
                f"this file needs model {h.model_name!r} (hash {h.model_hash.hex()[:16]}), "
                "which is not installed; pass --model PATH"
            ) from None
        if bytes.fromhex(int_model.content_hash()) != h.model_hash:
            raise ModelMismatch(
                f"this file needs model {h.model_name!r} with hash {h.model_hash.hex()[:16]}, "
                f"but the model given has hash {int_model.content_hash()[:16]}"
            )
    pos = h.size
    out: list[bytes | None] = [None] * len(h.segments)
    for i, s in enumerate(h.segments):
        if s.method == MODEL:
            continue
        payload = blob[pos : pos + s.payload]
        pos += s.payload
        if s.method == STORED:
            if len(payload) != s.length:
                raise FormatError("corrupt stored segment")
            out[i] = payload
        else:
            out[i] = _unzstd(payload, s.length)
        if progress:
            progress(s.length)
    for group, size in zip(members, h.blocks, strict=True):
        stream = blob[pos : pos + size]
        pos += size
        lanes = decode_block(
            int_model,
            stream,
            [h.segments[i].length for i in group],
            progress,
            adaptive=bool(h.flags & FLAG_ADAPTIVE),
        )
        for i, lane in zip(group, lanes, strict=True):
            out[i] = lane
    data = b"".join(out)
    if len(data) != h.length or hashlib.sha256(data).digest() != h.sha256:
        raise FormatError("checksum mismatch: the file is damaged")
    return data


def _unzstd(payload: bytes, length: int) -> bytes:
    try:
        data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=length)
    except zstandard.ZstdError as e:
        raise FormatError(f"corrupt zstd segment ({e})") from None
    if len(data) != length:
        raise FormatError("corrupt zstd segment (wrong length)")
    return data


MODEL_CACHE_SIZE = 4  # loaded integer models kept (by file and device), least recent out
_INT_MODELS: OrderedDict[tuple[str, int, str], IntMegabyte] = OrderedDict()


def clear_model_cache() -> None:
    """Forget the integer models compress()/decompress() loaded by name or path (each
    holds its weights in memory; a later call loads them again)."""
    _INT_MODELS.clear()


def _int_model(model: str | IntMegabyte, device: str) -> tuple[IntMegabyte, str]:
    """(integer model on `device`, name for the header). An IntMegabyte given is used as
    it is (its kernels too) when on `device`, else a moved copy: the caller's object is
    never changed. Models loaded by name or path are cached (at most MODEL_CACHE_SIZE,
    keyed by file, modification time and device; clear_model_cache() empties it)."""
    if isinstance(model, IntMegabyte):
        on_device = model.device == torch.device(device)
        return (model if on_device else model.to(device)), "custom"
    path = checkpoint.int_model_path(model)
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.exists() else 0, str(device))
    if key in _INT_MODELS:
        _INT_MODELS.move_to_end(key)
    else:
        _INT_MODELS[key] = checkpoint.load_int_model(model).to(device)
        while len(_INT_MODELS) > MODEL_CACHE_SIZE:
            _INT_MODELS.popitem(last=False)
    name = str(model).rstrip("/").split("/")[-1]
    return _INT_MODELS[key], name.removesuffix(".json")
