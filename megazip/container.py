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
import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zstandard

from . import checkpoint

if TYPE_CHECKING:  # torch, numba and the model load only when a segment is model-coded
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
DEFAULT_LANES = 64  # with --lanes and no --segment-size: segments of n / lanes bytes
# The default layout (default_layout): segments by input size (LAYOUT_SEGMENTS: up to
# that many bytes of input, segments of this size; then LAYOUT_SEGMENT), and from two
# BLOCK_BYTES of input on (up to MAX_BLOCKS of them), the segments spread evenly over
# several blocks, which --threads codes in parallel. Fewer lanes mean more lockstep
# decoding steps, each with a fixed cost (a 64 KiB file in 16 KiB segments took 16,384
# steps of 4 lanes); shorter segments cost a little density, as every lane starts
# without context (measured on six Canterbury files, 234 KB, against 16 KiB: +1.1 % at
# 4 KiB, +2.1 % at 2 KiB), so only small inputs, whose bytes weigh little in any total,
# get the shortest.
LAYOUT_SEGMENTS = ((1 << 16, 2048), (1 << 18, 8192))
LAYOUT_SEGMENT = 16384
BLOCK_BYTES = 1 << 20
MAX_BLOCKS = 16
# With --lanes and no --segment-size, segments are at least MIN_SEGMENT bytes.
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
            from .adaptive import ADAPTIVE_VERSION

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
    """With a lane count given: segments long enough for context, numerous enough to fill
    `lanes` lanes."""
    size = max(MIN_SEGMENT, -(-n // lanes))
    return min(MAX_SEGMENT, -(-size // patch) * patch)


def default_layout(n: int, patch: int) -> tuple[int, int]:
    """(segment size, lanes per block) for an input of n bytes: one block per whole
    BLOCK_BYTES of input (one below 2 * BLOCK_BYTES), its share of the input in segments
    of the size LAYOUT_SEGMENTS gives for n (whole patches). Beyond MAX_BLOCKS *
    BLOCK_BYTES, the layout of before: DEFAULT_LANES segments in one block (so a huge
    input has few segments, each with its own zstd frame and table entry)."""
    if n > MAX_BLOCKS * BLOCK_BYTES:
        return default_segment_size(n, DEFAULT_LANES, patch), DEFAULT_LANES
    seg = next((size for limit, size in LAYOUT_SEGMENTS if n <= limit), LAYOUT_SEGMENT)
    seg = -(-seg // patch) * patch
    blocks = max(1, n // BLOCK_BYTES)
    count = max(1, -(-n // seg))
    return seg, -(-count // blocks)


def default_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def compress(
    data: bytes,
    model: str | IntMegabyte = checkpoint.DEFAULT_MODEL,
    *,
    segment_size: int | None = None,
    lanes: int | None = None,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    stats: dict | None = None,
    adaptive: bool = True,
    threads: int | None = 1,
) -> bytes:
    """Compress `data` with a model (shipped name, checkpoint path, or IntMegabyte),
    followed by the adaptive stage unless adaptive=False. The layout is default_layout's
    unless `segment_size` or `lanes` is given (lanes alone: default_segment_size; a
    segment size alone: DEFAULT_LANES lanes). `threads` (None: every core) worker
    processes code the blocks in parallel; the output is the same for any number.
    `stats`, if given, is filled with: model_bits (ideal code length of the model
    segments under the final tables), prior_bits (the same under the model alone),
    model_bytes (their coded size), methods (of each segment), header_bytes and
    zstd_bytes (zstd -19 of the whole input)."""
    data = bytes(data)
    patch, name, model_hash = _model_identity(model)
    if segment_size is None and lanes is None:
        seg, lanes = default_layout(len(data), patch)
    else:
        lanes = lanes or DEFAULT_LANES
        seg = segment_size or default_segment_size(len(data), lanes, patch)
    if not 0 < seg <= MAX_SEGMENT or not 0 < lanes <= MAX_LANES:
        raise ValueError("segment size or lane count out of range")
    pieces = [data[i : i + seg] for i in range(0, len(data), seg)]
    zpieces = [zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(p) for p in pieces]
    groups = [list(range(b0, min(b0 + lanes, len(pieces)))) for b0 in range(0, len(pieces), lanes)]
    jobs = [([pieces[i] for i in g], [zpieces[i] for i in g], adaptive) for g in groups]
    results = _run_blocks(_code_block_job, jobs, model, device, threads, progress)
    segments, payloads, blocks, streams = [], [], [], []
    model_bits = prior_total = 0.0
    for idx, (members, stream, bits, prior, job_hash) in zip(groups, results, strict=True):
        model_hash = model_hash or job_hash
        members = [idx[j] for j in members]
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
        bytes.fromhex(model_hash),
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
            zstd_bytes=len(whole),  # zstd -19 of the whole input
        )
    return blob


def _model_identity(model) -> tuple[int, str, str | None]:
    """(patch size, name for the header, content hash or None when not known without
    loading the model) of a model given to compress(), read from its config alone for a
    name or path, so that the parent of worker processes never loads torch."""
    if not isinstance(model, (str, os.PathLike)):  # an IntMegabyte
        return model.config.patch_size, "custom", model.content_hash()
    meta = checkpoint.read_meta(model)
    if "patch_size" not in meta.get("config", {}):  # known only to the integer model's file
        int_model, name = _int_model(model, "cpu")
        return int_model.config.patch_size, name, int_model.content_hash()
    name = str(model).rstrip("/").split("/")[-1].removesuffix(".json")
    return meta["config"]["patch_size"], name, None


def _classical(piece: bytes, zpiece: bytes) -> int:
    """STORED or ZSTD, whichever is smaller (STORED on a tie)."""
    return ZSTD if len(zpiece) < len(piece) else STORED


def encode_block(*args, **kwargs):
    """coder.encode_block, imported on first use (torch, numba: only for model coding)."""
    from . import coder

    return coder.encode_block(*args, **kwargs)


def decode_block(*args, **kwargs):
    """coder.decode_block, imported on first use."""
    from . import coder

    return coder.decode_block(*args, **kwargs)


def _code_block(int_model, pieces, zpieces, adaptive, progress, threads=None):
    """Code the segments `pieces` of one block: (indices of the model members in
    `pieces`, their stream, their bits under the final tables, their bits under the prior
    alone).

    A segment is a member if its model cost (bits / 8 + STREAM_OVERHEAD bytes, under the
    stream actually written) is below both its zstd and stored sizes (ties go to zstd or
    storing). The adaptive stage's record length depends on all of a block's lanes, so
    re-coding without the segments that lost can change the members' costs: the block is
    re-coded, and the choice re-checked, until every member still wins (members only
    leave, so this ends; the same input always gives the same result)."""
    members, coded = list(range(len(pieces))), None
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
        members = [
            i
            for i, b in zip(coded, bits, strict=True)
            if b / 8 + STREAM_OVERHEAD < min(len(zpieces[i]), len(pieces[i]))
        ]
        if members == coded:
            return members, stream, bits, prior
    return [], b"", [], []


def _code_block_job(int_model, job, progress, threads=1):
    pieces, zpieces, adaptive = job
    coded = _code_block(int_model, pieces, zpieces, adaptive, progress, threads)
    return (*coded, int_model.content_hash())


def _decode_block_job(int_model, job, progress, threads=1):
    stream, lengths, adaptive = job
    return decode_block(int_model, stream, lengths, progress, adaptive=adaptive)


# ----------------------------------------------------------------------- worker processes
# Blocks are independent, so `threads` worker processes code them in parallel, each on
# one thread (a second thread pool inside a worker would only fight the others: OpenMP
# barriers on a busy machine, numba's pool slowing torch's int8 GEMM). A worker loads the
# model once. The bytes do not depend on the number of workers.
_WORKER: dict = {}
PARALLEL_MIN_BYTES = 1 << 19  # less model-coded input than this: no workers (their start
# costs seconds: torch, numba and the model load in each)
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def _load(model, device: str, header: Header | None):
    """The integer model for coding (header None) or for decoding `header` (checked)."""
    return _decoder_model(model, device, header) if header else _int_model(model, device)[0]


def _worker_init(model, device: str, header: Header | None) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER["args"] = (model, device, header)


def _worker_run(fn, job):
    if "model" not in _WORKER:
        _WORKER["model"] = _load(*_WORKER["args"])
    return fn(_WORKER["model"], job, None)


def _job_bytes(fn, job) -> int:
    return sum(map(len, job[0])) if fn is _code_block_job else sum(job[1])


def _run_blocks(fn, jobs, model, device, threads, progress, header=None):
    """[fn(int_model, job, progress) for job in jobs], in `threads` worker processes when
    there are several jobs and threads > 1 (None: every core), else in this process."""
    workers = min(default_threads() if threads is None else max(1, threads), len(jobs))
    if sum(_job_bytes(fn, job) for job in jobs) < PARALLEL_MIN_BYTES:
        workers = 1
    if workers <= 1:  # in this process; threads > 1 may still pipeline within a block
        int_model = _load(model, device, header) if jobs else None
        n = default_threads() if threads is None else max(1, threads)
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
            initargs=(model, device, header),
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


def _decoder_model(model, device: str, h: Header | None):
    """The integer model that decodes `h` (checked against its hash when h is given)."""
    try:
        int_model, _ = _int_model(model if model is not None else h.model_name, device)
    except checkpoint.ModelNotFound:
        if h is None:
            raise
        raise checkpoint.ModelNotFound(
            f"this file needs model {h.model_name!r} (hash {h.model_hash.hex()[:16]}), "
            "which is not installed; pass --model PATH"
        ) from None
    if h is not None and bytes.fromhex(int_model.content_hash()) != h.model_hash:
        raise ModelMismatch(
            f"this file needs model {h.model_name!r} with hash {h.model_hash.hex()[:16]}, "
            f"but the model given has hash {int_model.content_hash()[:16]}"
        )
    return int_model


def decompress(
    blob: bytes,
    model: str | IntMegabyte | None = None,
    *,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    threads: int | None = 1,
) -> bytes:
    """Decompress a .mgz blob. The model defaults to the one named in the header; a model
    whose content hash differs from the header's is refused (ModelMismatch). `threads`
    (None: every core) worker processes decode the blocks in parallel. Raises
    FormatError for damaged input, including a checksum mismatch."""
    h = read_header(blob)
    members = h.block_members()
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
    jobs = []
    for group, size in zip(members, h.blocks, strict=True):
        lengths = [h.segments[i].length for i in group]
        jobs.append((blob[pos : pos + size], lengths, bool(h.flags & FLAG_ADAPTIVE)))
        pos += size
    lanes = _run_blocks(_decode_block_job, jobs, model, device, threads, progress, h)
    for group, block in zip(members, lanes, strict=True):
        for i, lane in zip(group, block, strict=True):
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


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a CUDA GPU is available, else 'cpu' (imports torch: call it
    only when the model runs); other names are returned as they are."""
    if device in ("auto", "cuda"):
        import torch

        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but no CUDA GPU is available")
    return device


def _int_model(model: str | IntMegabyte, device: str) -> tuple[IntMegabyte, str]:
    """(integer model on `device`, name for the header). An IntMegabyte given is used as
    it is (its kernels too) when on `device`, else a moved copy: the caller's object is
    never changed. Models loaded by name or path are cached (at most MODEL_CACHE_SIZE,
    keyed by file, modification time and device; clear_model_cache() empties it)."""
    import torch

    from .intmodel import IntMegabyte

    device = resolve_device(device)
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
