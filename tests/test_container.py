"""The .mgz container (megazip/container.py): byte-for-byte round trips, the layout of
docs/FORMAT.md (checked with an independent parser and an independent range-coder
encoder), code length, never worse than zstd -19 or storing, and refusal of bad input.

Models: `rand` is the integer model of a randomly perturbed test-preset model (it codes
nothing well, so the container stores or zstd-compresses); `trained` learnt word salad
for a few seconds, so the container picks the model for text and the range-coder path
is exercised end to end.
"""

from __future__ import annotations

import contextlib
import struct
import zlib

import constriction
import numpy as np
import pytest
import torch
import zstandard
from conftest import ROOT
from helpers import random_int_model, trained_pair, word_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megazip import adaptive, checkpoint, container
from megazip.coder import code_lengths, decode_block, encode_block
from megazip.container import MAX_FRAME, MAX_LANES, FormatError, ModelMismatch
from megazip.evaluate import int_code_lengths
from megazip.intmodel import COUNT_TOTAL
from megazip.kernels import TorchKernels

STORED, ZSTD, MODEL, STAGE = 0, 1, 2, 3
KNOWN_FLAGS = container.KNOWN_FLAGS
# model streams without the adaptive stage: their tables are the integer model's alone,
# which documented_stream() re-derives
PLAIN = {"adaptive": False}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rand():
    return random_int_model(0, 0.2)


@pytest.fixture(scope="module")
def trained():
    return trained_pair()[1]


def zstd19(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(data)


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ------------------------------------------------- an independent reading of FORMAT.md


class Bytes:
    """A cursor over bytes, reading FORMAT.md's field types."""

    def __init__(self, blob: bytes, pos: int = 0):
        self.blob, self.pos = blob, pos

    def take(self, n: int) -> bytes:
        assert self.pos + n <= len(self.blob), "runs past the end"
        out = self.blob[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def varint(self) -> int:
        n = shift = 0
        while True:
            b = self.u8()
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return n


def leb128(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        out += bytes([low | (0x80 if n else 0)])
        if not n:
            return out


def parse_frame(blob: bytes, at: int = 0) -> dict:
    """One frame's header as docs/FORMAT.md describes it (written from the document)."""
    r = Bytes(blob, at)
    assert r.take(4) == b"\x89MGZ"
    h = dict(version=r.u8(), flags=r.u8(), index=r.varint(), length=r.varint())
    h.update(segment_size=0, stage=0, name="", model_hash=b"", lanes=1, segments=[], blocks=[])
    h["crc"] = 0
    if h["length"]:
        h["segment_size"] = r.varint()
        if h["flags"] & 6:
            h["stage"] = r.u8()
        if h["flags"] & 2:
            h["name"] = r.take(r.u8()).decode()
            h["model_hash"] = r.take(8 if h["version"] >= 4 else 32)
            h["lanes"] = r.varint()
        seg = h["segment_size"]
        count = -(-h["length"] // seg)
        while len(h["segments"]) < count:
            if h["version"] >= 4:  # runs: (n - 1) << 2 | method
                run = r.varint()
                method, n = run & 3, (run >> 2) + 1
            else:
                method, n = r.u8(), 1
            for _ in range(n):
                length = min(seg, h["length"] - len(h["segments"]) * seg)
                payload = {STORED: length, ZSTD: None, MODEL: 0, STAGE: None}[method]
                if method in (ZSTD, STAGE):
                    payload = r.varint()
                h["segments"].append((method, payload, length))
        h["blocks"] = [r.varint() for _ in expected_blocks(h["segments"], h["lanes"])]
        h["crc"] = r.u32()
    end = r.pos
    assert r.u32() == zlib.crc32(blob[at:end]), "CRC-32 over the header bytes before it"
    h["header_size"] = r.pos - at
    h["at"] = at
    h["body"] = sum(s[1] for s in h["segments"]) + sum(h["blocks"])
    return h


def parse_file(blob: bytes) -> list[dict]:
    """Every frame of a .mgz file (the headers; bodies skipped)."""
    frames, at = [], 0
    while at < len(blob):
        h = parse_frame(blob, at)
        frames.append(h)
        at += h["header_size"] + h["body"]
    assert at == len(blob), "nothing after the last frame"
    return frames


def parse(blob: bytes) -> dict:
    """The header of a file of one frame."""
    frames = parse_file(blob)
    assert len(frames) == 1
    return frames[0]


def pack(h: dict) -> bytes:
    """A frame header from the fields of `parse` (for crafting damaged files)."""
    out = b"\x89MGZ" + bytes([h["version"], h["flags"]]) + leb128(h["index"])
    out += leb128(h["length"])
    if h["length"]:
        out += leb128(h["segment_size"])
        if h["flags"] & 6:
            out += bytes([h["stage"]])
        if h["flags"] & 2:
            name = h["name"].encode()
            out += bytes([len(name)]) + name + h["model_hash"] + leb128(h["lanes"])
        runs = h.get("runs")  # given (format 4), else maximal runs, or one per segment
        if runs is None:
            runs = []
            for sg in h["segments"]:
                if h["version"] >= 4 and runs and runs[-1][0][0] == sg[0]:
                    runs[-1].append(sg)
                else:
                    runs.append([sg])
        for run in runs:
            method = run[0][0]
            if h["version"] >= 4:
                out += leb128((len(run) - 1) << 2 | method)
            for _, payload, _ in run:
                out += b"" if h["version"] >= 4 else bytes([method])
                out += leb128(payload) if method in (ZSTD, STAGE) else b""
        out += b"".join(leb128(b) for b in h["blocks"]) + struct.pack("<I", h["crc"])
    return out + struct.pack("<I", zlib.crc32(out))


def reframe(blob: bytes, **changes) -> bytes:
    """A one-frame `blob` with header fields changed (and a valid header CRC); the body
    given by body=..."""
    h = parse(blob)
    body = changes.pop("body", blob[h["header_size"] :])
    h.update(changes)
    return pack(h) + body


def expected_blocks(segments, lanes: int) -> list[list[int]]:
    """Model segments grouped by block: segment i belongs to block i // lanes."""
    groups = []
    for b0 in range(0, len(segments), lanes):
        members = [i for i in range(b0, min(b0 + lanes, len(segments))) if segments[i][0] == MODEL]
        if members:
            groups.append(members)
    return groups


def documented_stream(int_model, pieces: list[bytes]) -> bytes:
    """One block's stream, encoded independently as FORMAT.md says: zero-pad the lanes to
    whole patches, take the byte-by-byte tables, and range-code position-major (at
    position t, every lane longer than t in lane order) with constriction's queue
    RangeEncoder and Categorical(perfect=False) fed the counts as float64."""
    P = int_model.config.patch_size
    T = -(-max(len(p) for p in pieces) // P) * P
    lanes = torch.zeros(len(pieces), T, dtype=torch.int64)
    for i, p in enumerate(pieces):
        lanes[i, : len(p)] = torch.tensor(list(p), dtype=torch.int64)
    tables = int_model.counts_incremental(lanes).cpu()
    assert torch.all(tables >= 1) and torch.all(tables.sum(-1) == COUNT_TOTAL)
    symbols, probs = [], []
    for t in range(T):
        for i, p in enumerate(pieces):
            if len(p) > t:
                symbols.append(p[t])
                probs.append(tables[i, t].numpy().astype(np.float64))
    enc = constriction.stream.queue.RangeEncoder()
    family = constriction.stream.model.Categorical(perfect=False)
    enc.encode(np.array(symbols, dtype=np.int32), family, np.stack(probs))
    words = enc.get_compressed()
    assert words.dtype == np.uint32
    return words.astype("<u4").tobytes()


def arithmetic_code(bits, probs) -> bytes:
    """The binary arithmetic coder of FORMAT.md ("Stage segments"), written from the
    document: decisions `bits` with p(bit = 1) = probs / 65536."""
    x1, x2, out = 0, 0xFFFFFFFF, bytearray()
    for y, p in zip(bits, probs, strict=True):
        r = x2 - x1
        xmid = x1 + (r >> 16) * p + ((r & 0xFFFF) * p >> 16)
        x1, x2 = (x1, xmid) if y else (xmid + 1, x2)
        while (x1 ^ x2) >> 24 == 0:
            out.append(x2 >> 24)
            x1, x2 = (x1 << 8) & 0xFFFFFFFF, ((x2 << 8) & 0xFFFFFFFF) | 0xFF
    return bytes(out + bytes([x1 >> 24]))


def documented_adaptive_stream(int_model, pieces: list[bytes]) -> bytes:
    """One block's stream with the adaptive stage, encoded as FORMAT.md says: the block's
    record length (a varint, adaptive.choose_record of its lanes), then the arithmetic code of
    every decision: at position t, depth by depth, bit d of every lane longer than t in
    lane order, with the stage's probabilities over the model's tables (mix_chunk, the
    lanes zero-padded to whole patches)."""
    P = int_model.config.patch_size
    T = -(-max(len(p) for p in pieces) // P) * P
    lanes = np.zeros((len(pieces), T), np.int64)
    for i, p in enumerate(pieces):
        lanes[i, : len(p)] = list(p)
    tables = int_model.counts_incremental(torch.from_numpy(lanes)).cpu().numpy()
    record = adaptive.choose_record(pieces)
    active = np.array([len(p) for p in pieces])[:, None] > np.arange(T)
    models = adaptive.LaneModels(len(pieces), T, record)
    probs = adaptive.mix_chunk(models, tables.astype(np.int64), lanes, active)
    bits, ps = [], []
    for t in range(T):
        for d in range(8):
            for i, p in enumerate(pieces):
                if len(p) > t:
                    bits.append((p[t] >> (7 - d)) & 1)
                    ps.append(int(probs[i, t, d]))
    return leb128(record) + arithmetic_code(bits, ps)


def documented_stage_stream(piece: bytes) -> bytes:
    """A stage segment's payload as FORMAT.md says: the record length (a varint), then the
    arithmetic code of the byte's decisions (most significant first) under the adaptive
    stage's probabilities for one lane with a flat prior (adaptive.mix_chunk)."""
    record = adaptive.choose_record([piece])
    sym = np.frombuffer(piece, np.uint8).astype(np.int64)[None]
    counts = np.full((1, len(piece), 256), COUNT_TOTAL // 256, np.int64)
    probs = adaptive.mix_chunk(
        adaptive.LaneModels(1, len(piece), record), counts, sym, np.ones(sym.shape, bool)
    )[0]
    bits = ((sym[0][:, None] >> np.arange(7, -1, -1)) & 1).ravel()
    return leb128(record) + arithmetic_code(bits.tolist(), probs.ravel().tolist())


def check_layout(blob: bytes, data: bytes, int_model) -> dict:
    """Everything FORMAT.md promises about `blob`, checked independently of the reader;
    the header of its first frame."""
    frames = parse_file(blob)
    info = container.scan(blob)
    assert len(info.frames) == len(frames) and info.size == len(blob)
    at_data = 0
    for k, (h, r) in enumerate(zip(frames, info.frames, strict=True)):
        assert h["version"] == container.VERSION == 4
        assert h["flags"] & ~KNOWN_FLAGS == 0, "unknown flag bits written"
        assert h["index"] == k and bool(h["flags"] & 1) == (k == len(frames) - 1)
        assert h["header_size"] == r.size
        frame = data[at_data : at_data + h["length"]]
        at_data += h["length"]
        assert h["crc"] == (zlib.crc32(frame) if frame else 0)
        assert [(s.method, s.payload, s.length) for s in r.segments] == h["segments"]
        assert r.blocks == h["blocks"] and r.lanes == h["lanes"]
        assert r.block_members() == expected_blocks(h["segments"], h["lanes"])
        has_model = any(s[0] == MODEL for s in h["segments"])
        assert bool(h["flags"] & 2) == has_model
        has_stage = any(s[0] == STAGE for s in h["segments"])
        assert bool(h["flags"] & 4) == has_stage
        if has_stage:
            assert h["stage"] == r.stage == adaptive.ADAPTIVE_VERSION
        if has_model:
            assert h["name"] == r.model_name and h["model_hash"] == r.model_hash
            assert h["model_hash"] == bytes.fromhex(int_model.content_hash())[:8]
            assert h["stage"] in (0, adaptive.ADAPTIVE_VERSION) and 0 < h["lanes"] <= MAX_LANES
        if not frame:
            assert h["segments"] == [] and len(frames) == 1
            continue
        # segments are consecutive slices of segment_size bytes (the last may be shorter)
        seg = h["segment_size"]
        assert 0 < seg <= h["length"] <= MAX_FRAME
        pieces = [frame[i : i + seg] for i in range(0, len(frame), seg)]
        assert [len(p) for p in pieces] == [s[2] for s in h["segments"]]
        # body: stored and zstd payloads in segment order, then one stream per model block
        pos = h["at"] + h["header_size"]
        for (method, payload, length), piece in zip(h["segments"], pieces, strict=True):
            if method == MODEL:
                assert payload == 0
                continue
            body = blob[pos : pos + payload]
            pos += payload
            if method == STORED:
                assert body == piece and payload == length
            elif method == STAGE:
                assert payload < length and body == documented_stage_stream(piece)
            else:
                assert method == ZSTD and zstandard.ZstdDecompressor().decompress(body) == piece
                assert payload < length
        for members, size in zip(
            expected_blocks(h["segments"], h["lanes"]), h["blocks"], strict=True
        ):
            stream = blob[pos : pos + size]
            pos += size
            lane_bytes = sum(len(pieces[i]) for i in members)
            assert lane_bytes <= 256 * size and size <= lane_bytes
            if h["stage"] == 0:  # the model's own tables
                assert size % 4 == 0
                assert stream == documented_stream(int_model, [pieces[i] for i in members])
            else:
                lanes = [pieces[i] for i in members]
                assert stream == documented_adaptive_stream(int_model, lanes)
        assert pos == h["at"] + h["header_size"] + h["body"]
    assert at_data == len(data)
    return frames[0]


def roundtrip(data: bytes, int_model, **kw) -> tuple[bytes, dict]:
    """Compress, check the size bounds, decompress byte for byte; (blob, stats)."""
    stats: dict = {}
    blob = container.compress(data, int_model, stats=stats, **kw)
    info = container.scan(blob)
    assert stats["header_bytes"] == info.header_bytes
    assert info.length == len(data) == stats["length"]
    assert len(blob) <= len(data) + info.header_bytes, "bigger than storing plus the header"
    if data and len(info.frames) == 1:
        assert len(blob) <= len(zstd19(data)) + info.header_bytes, "worse than zstd -19 + header"
    assert container.decompress(blob, int_model) == data
    return blob, stats


# ---------------------------------------------------------------------------- round trips


LAYOUTS = [dict(), dict(segment_size=16, lanes=3), dict(segment_size=7, lanes=1)]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\xff", b"a", bytes(range(256)), bytes(range(256))[::-1] * 3],
    ids=["empty", "zero", "ff", "a", "all-bytes", "all-bytes-x3"],
)
@pytest.mark.parametrize("layout", LAYOUTS, ids=["default", "16x3", "7x1"])
def test_round_trip_small_inputs(rand, data, layout):
    blob, stats = roundtrip(data, rand, **layout)
    h = check_layout(blob, data, rand)
    if not data:
        assert h["segments"] == [] and h["blocks"] == [] and len(blob) == h["header_size"]
    assert len(stats["methods"]) == len(h["segments"])


@pytest.mark.parametrize("options", [PLAIN, {}], ids=["plain", "default"])
def test_model_segments_in_several_blocks(trained, options):
    data = word_text(11, 3000)
    blob, stats = roundtrip(data, trained, segment_size=256, lanes=3, **options)
    assert stats["methods"] == ["model"] * 12, stats["methods"]
    h = check_layout(blob, data, trained)
    assert len(h["blocks"]) == 4
    assert len(blob) < len(zstd19(data))


def test_every_method_in_one_file_and_mixed_blocks(trained):
    text, noise, zeros = word_text(12, 800), random_bytes(600, 1), bytes(700)
    data = text + noise + zeros
    blob, stats = roundtrip(data, trained, segment_size=200, lanes=3, **PLAIN)
    methods = stats["methods"]
    assert methods[:4] == ["model"] * 4
    assert methods[4:7] == ["stored"] * 3
    assert set(methods[7:]) == {"zstd"}
    h = check_layout(blob, data, trained)
    # block 1 holds segments 3 (model), 4 and 5 (stored): its stream codes only lane 3
    assert expected_blocks(h["segments"], 3) == [[0, 1, 2], [3]]


@pytest.mark.parametrize("options", [PLAIN, {}], ids=["plain", "default"])
def test_code_length_is_within_half_a_percent_of_ideal(trained, options):
    data = word_text(13, 6000)
    stats: dict = {}
    blob = container.compress(data, trained, segment_size=500, lanes=4, stats=stats, **options)
    blocks = len(container.scan(blob).frames[0].blocks)
    assert blocks == 3 and set(stats["methods"]) == {"model"}
    bits, coded = stats["model_bits"], stats["model_bytes"] * 8
    assert coded <= bits * 1.005 + 64 * blocks, (coded, bits)
    assert coded >= bits * 0.99 - 64 * blocks, "coded size far below the ideal: wrong stats?"
    assert container.decompress(blob, trained) == data


def record_text(n: int) -> bytes:
    """Fixed-width records (37 bytes of word salad, a numbered field): 44 bytes each."""
    return b"".join(word_text(40 + i, 37) + b"|%04d|\n" % (i * 7 % 10000) for i in range(n))


@pytest.mark.parametrize("kind", ["records", "text"])
def test_eval_code_length_is_the_encoders_for_one_segment(trained, kind):
    """int_code_lengths (megazip eval --int) and the encoder take one code path: for a
    file coded as one segment they agree to the last bit, the record length the encoder
    chooses and signals included."""
    data = record_text(60) if kind == "records" else word_text(5, 3000)
    if kind == "records":
        assert adaptive.choose_record([data]) == 44
    stats: dict = {}
    blob = container.compress(data, trained, segment_size=len(data), stats=stats)
    assert stats["methods"] == ["model"]
    assert int_code_lengths(trained, data) == (stats["prior_bits"], stats["model_bits"])
    assert code_lengths(trained, [data]) == ([stats["prior_bits"]], [stats["model_bits"]])
    assert container.decompress(blob, trained) == data


def test_every_model_segment_beats_its_alternatives_in_the_stream_written(trained):
    """A block is re-coded without its zstd/stored segments; the adaptive stage's record
    length depends on all of a block's lanes, so the choice is checked again under the
    stream actually written: every model segment costs less than zstd and storing there
    (or those that do not would save less than 1 / RECODE_MIN_GAIN of the stream), and
    model_bits is the code length of those streams."""
    rng = np.random.default_rng(5)
    record = rng.integers(0, 256, 50, dtype=np.uint8).tobytes()
    data = b"".join(
        [
            record_text(7)[:300],
            random_bytes(300, 6),
            record * 6,
            word_text(16, 300),
            record_text(14)[300:600],
            bytes(300),
            random_bytes(300, 7),
            word_text(17, 300),
        ]
    )
    stats: dict = {}
    blob = container.compress(data, trained, segment_size=300, lanes=4, stats=stats)
    assert container.compress(data, trained, segment_size=300, lanes=4) == blob
    h = container.scan(blob).frames[0]
    pieces = [data[i : i + 300] for i in range(0, len(data), 300)]
    assert "model" in stats["methods"] and set(stats["methods"]) != {"model"}
    total = 0.0
    for members, size in zip(h.block_members(), h.blocks, strict=True):
        _, bits = code_lengths(trained, [pieces[i] for i in members])
        excess = 0.0
        for i, b in zip(members, bits, strict=True):
            alternative = min(len(zstd19(pieces[i])), len(pieces[i]))
            excess += max(0.0, b / 8 + container.STREAM_OVERHEAD - alternative)
        assert excess * container.RECODE_MIN_GAIN < size, (members, excess, size)
        total += sum(bits)
    assert stats["model_bits"] == total
    assert container.decompress(blob, trained) == data


def test_compress_leaves_the_callers_model_alone(rand):
    on_torch = rand.to("cpu", kernels=TorchKernels)
    data = word_text(18, 2000)
    blob = container.compress(data, on_torch, segment_size=500)
    assert on_torch.kernels is TorchKernels
    assert container.compress(data, rand, segment_size=500) == blob
    assert container.decompress(blob, on_torch) == data
    assert on_torch.kernels is TorchKernels


def test_the_model_cache_is_bounded_and_can_be_cleared(rand, tmp_path):
    from megazip.export import save_int_model

    container.clear_model_cache()
    paths = []
    for i in range(container.MODEL_CACHE_SIZE + 2):
        (tmp_path / f"m{i}.json").write_text("{}")
        save_int_model(rand, tmp_path / f"m{i}.int_model.safetensors")
        paths.append(str(tmp_path / f"m{i}.json"))
    for p in paths:
        container.compress(b"abc" * 10, p)  # the model is tried (and loaded) on this
        assert 0 < len(container._INT_MODELS) <= container.MODEL_CACHE_SIZE
    container.clear_model_cache()
    assert not container._INT_MODELS


def test_decoding_restores_the_callers_thread_count(trained):
    lanes = [word_text(19, 200), word_text(20, 150)]
    stream, _ = encode_block(trained, lanes)
    before = torch.get_num_threads()
    seen = []

    def fail(n):
        seen.append(torch.get_num_threads())
        raise KeyboardInterrupt

    try:
        torch.set_num_threads(2)
        assert decode_block(trained, stream, [200, 150]) == lanes
        assert torch.get_num_threads() == 2
        with pytest.raises(KeyboardInterrupt):
            decode_block(trained, stream, [200, 150], progress=fail)
        assert seen == [1] and torch.get_num_threads() == 2
        assert decode_block(trained, stream, [200, 150], threads=None, progress=seen.append)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_one_megabyte_of_zeros(rand):
    data = bytes(1 << 20)
    blob, stats = roundtrip(data, rand)
    assert len(blob) < 1000
    assert stats["model_bits"] == 0 and stats["model_bytes"] == 0


def test_100_kb_of_random_bytes_are_stored(rand):
    data = random_bytes(100_000, 2)
    blob, stats = roundtrip(data, rand, segment_size=8192, lanes=16)
    assert set(stats["methods"]) == {"stored"}
    h = check_layout(blob, data, rand)
    assert len(blob) == len(data) + h["header_size"]


def test_project_sources(rand):
    files = sorted((ROOT / "megazip").glob("*.py"))
    data = b"".join(f.read_bytes() for f in files)
    assert len(data) > 50_000
    blob, _ = roundtrip(data, rand, segment_size=16384, lanes=2)
    check_layout(blob, data, rand)


@pytest.mark.slow
def test_every_corpus_file(rand, corpora):
    files = sorted(p for p in corpora.rglob("*") if p.is_file())
    assert len(files) >= 15
    total = 0
    for f in files:
        data = f.read_bytes()
        total += len(data)
        # whole files through the model path; the adaptive stage (about 25 us per byte) on
        # the first 24 KiB of each, so the suite stays within its time budget
        blob, stats = roundtrip(data, rand, segment_size=4096, lanes=256, adaptive=False)
        assert container.scan(blob).frames[0].crc == zlib.crc32(data), f
        roundtrip(data[: 24 * 1024], rand, segment_size=4096, lanes=256)
    assert total > 3_000_000


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=st.one_of(
        st.binary(max_size=3000),
        st.binary(min_size=1, max_size=40).map(lambda b: b * (3000 // len(b))),
    ),
    segment_size=st.sampled_from([None, 16, 333, 4096]),
    lanes=st.sampled_from([1, 3, 64]),
)
def test_round_trip_any_bytes(rand, data, segment_size, lanes):
    blob, _ = roundtrip(data, rand, segment_size=segment_size, lanes=lanes)
    parse(blob)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    lanes=st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=40),
            st.integers(1, 60).map(lambda n: word_text(n, n)),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_range_coder_round_trips_any_lanes(trained, lanes):
    lengths = [len(x) for x in lanes]
    stream, bits = encode_block(trained, lanes, **PLAIN)
    assert len(stream) % 4 == 0 and len(bits) == len(lanes)
    assert stream == documented_stream(trained, lanes)
    assert decode_block(trained, stream, lengths, **PLAIN) == lanes
    # and with the adaptive stage
    stream, bits = encode_block(trained, lanes)
    assert all(b >= 0 for b in bits)
    assert stream == documented_adaptive_stream(trained, lanes)
    assert decode_block(trained, stream, lengths) == lanes


def test_ideal_code_lengths_are_finite_for_any_lane_lengths(rand, trained):
    """Bug (adaptive stage): mix_chunk leaves the tables of positions past a lane's end
    zero, encode_block then adds (24 - log2 0) * 0 = NaN to the lane's bits, and with a
    NaN cost compress() picks the model for the segment whatever it costs."""
    lanes = [b"\x00", b"abcde", random_bytes(300, 9), word_text(3, 257)]
    for int_model in (rand, trained):
        _, bits = encode_block(int_model, lanes)
        assert all(np.isfinite(b) and b > 0 for b in bits), bits
    stats: dict = {}
    container.compress(random_bytes(1000, 8), rand, segment_size=300, lanes=2, stats=stats)
    assert np.isfinite(stats["model_bits"])
    assert stats["methods"] == ["stored"] * 4


# --------------------------------------------------------------------- size guarantees


def test_incompressible_inputs_grow_by_at_most_the_header(rand, trained, corpora):
    noise = (corpora / "brotli_testdata" / "random_org_10k.bin").read_bytes()
    packed = zstd19(word_text(14, 50_000))
    for data in (noise, packed):
        for int_model in (rand, trained):
            stats: dict = {}
            blob = container.compress(data, int_model, stats=stats)
            assert len(blob) <= len(data) + stats["header_bytes"]
            assert len(blob) <= len(data) + container.scan(blob).header_bytes
            assert container.decompress(blob, int_model) == data


def test_never_worse_than_zstd_on_redundant_data(rand):
    data = (b"0123456789abcdef" * 64 + random_bytes(1000, 3)) * 20  # repeats across segments
    blob, stats = roundtrip(data, rand, segment_size=1024, lanes=4)
    h = parse(blob)
    # zstd over the whole input wins here: one zstd segment, as FORMAT.md describes
    assert [s[0] for s in h["segments"]] == [ZSTD] and h["lanes"] == 1
    assert h["segment_size"] == len(data)
    assert len(blob) == len(zstd19(data)) + h["header_size"]


def test_a_large_input_is_cut_into_frames_that_each_fall_back_to_zstd(rand):
    """Frames of FRAME_SIZE bytes (a small frame_size here), each coded on its own: for
    zeros zstd over the whole frame wins every time."""
    data = bytes(5000) + b"tail"
    blob = container.compress(data, rand, frame_size=1024, adaptive=False)
    frames = parse_file(blob)
    assert [h["length"] for h in frames] == [1024] * 4 + [908]
    assert [h["flags"] for h in frames] == [0, 0, 0, 0, 1]
    assert all([s[0] for s in h["segments"]] == [ZSTD] for h in frames)
    check_layout(blob, data, rand)
    assert container.decompress(blob, rand) == data


def test_frame_boundaries_do_not_change_the_bytes_of_a_frame(trained):
    """Frame k of a file is the frame a fresh writer makes from its bytes (except its
    index and LAST flag): frames are independent."""
    data = word_text(30, 1200) + random_bytes(300, 30)
    blob = container.compress(data, trained, frame_size=500, segment_size=250, lanes=2)
    frames = parse_file(blob)
    assert len(frames) == 3 and MODEL in [s[0] for s in frames[0]["segments"]]
    for k, h in enumerate(frames):
        alone = container.compress(
            data[500 * k : 500 * (k + 1)], trained, segment_size=250, lanes=2
        )
        mine = blob[h["at"] + h["header_size"] : h["at"] + h["header_size"] + h["body"]]
        assert alone[parse(alone)["header_size"] :] == mine
        assert {**parse(alone), "index": k, "flags": h["flags"], "at": h["at"]} == h | {
            "header_size": parse(alone)["header_size"]
        }
    assert container.decompress(blob, trained) == data


def test_concatenated_files_decompress_to_the_concatenation(trained):
    a, b = word_text(31, 400), random_bytes(200, 31)
    ba = container.compress(a, trained)
    bb = container.compress(b, trained)
    assert container.decompress(ba + bb, trained) == a + b
    assert container.decompress(ba + container.compress(b""), trained) == a


def test_lost_repeated_or_moved_frames_are_refused(trained):
    data = word_text(32, 900)
    blob = container.compress(data, trained, frame_size=300)
    f = parse_file(blob)
    spans = [blob[h["at"] : h["at"] + h["header_size"] + h["body"]] for h in f]
    for bad in (spans[0] + spans[2], spans[0] + spans[1] + spans[1] + spans[2],
                spans[1] + spans[0] + spans[2], spans[0] + spans[1]):  # fmt: skip
        with pytest.raises(FormatError):
            container.decompress(bad, trained)


def test_streaming_reads_and_writes_frame_by_frame(trained):
    """compress_stream/decompress_stream give the bytes of compress/decompress, reading
    their input in pieces (a reader that returns at most 7 bytes per call)."""
    import io

    class Trickle(io.RawIOBase):
        def __init__(self, data):
            self.data, self.pos = data, 0

        def readable(self):
            return True

        def read(self, n=-1):
            n = 7 if n < 0 else min(n, 7)
            out = self.data[self.pos : self.pos + n]
            self.pos += len(out)
            return out

    data = word_text(33, 1000) + random_bytes(500, 33)
    blob = container.compress(data, trained, frame_size=600)
    out = io.BytesIO()
    n = container.compress_stream(Trickle(data), out, trained, frame_size=600)
    assert out.getvalue() == blob and n == len(blob)
    back = io.BytesIO()
    assert container.decompress_stream(Trickle(blob), back, trained) == len(data)
    assert back.getvalue() == data


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def mixed_blob(trained):
    """A small file with model, stored and zstd segments in two blocks."""
    data = word_text(15, 300) + random_bytes(100, 4) + bytes(100)
    # without the adaptive stage, so that zstd wins the run of zeros (with it, the model does)
    blob = container.compress(data, trained, segment_size=100, lanes=3, adaptive=False)
    methods = [s[0] for s in parse(blob)["segments"]]
    check_layout(blob, data, trained)
    assert methods == [MODEL, MODEL, MODEL, STORED, ZSTD], methods
    return data, blob


def test_wrong_magic_is_refused(mixed_blob, trained):
    _, blob = mixed_blob
    for bad in (b"", b"\x89", b"\x89MG", b"\x89MGY" + blob[4:], b"\x1f\x8b\x08" + blob[3:]):
        with pytest.raises(FormatError, match="magic"):
            container.decompress(bad, trained)
    with pytest.raises(FormatError):
        container.scan(zstd19(b"not a megazip file"))


@pytest.mark.parametrize("version", [0, 1, 5, 255])
def test_unknown_version_is_refused(mixed_blob, trained, version):
    _, blob = mixed_blob
    bad = bytearray(blob)
    bad[4] = version
    with pytest.raises(FormatError, match="version"):
        container.decompress(bytes(bad), trained)
    with pytest.raises(FormatError, match="version"):  # also with a valid CRC
        container.decompress(reframe(blob, version=version), trained)


@pytest.mark.parametrize("flags", [0x80, 0x40, 0x08])
def test_unknown_flags_are_refused(mixed_blob, trained, flags):
    """Flags announce features that change how the body is read: a reader that does not
    know one must refuse the file rather than misread it."""
    _, blob = mixed_blob
    assert flags & KNOWN_FLAGS == 0
    forged = reframe(blob, flags=parse(blob)["flags"] | flags)
    with pytest.raises(FormatError):
        container.decompress(forged, trained)


def test_truncated_files_are_refused(mixed_blob, trained):
    _, blob = mixed_blob
    for n in [*range(0, len(blob), 7), len(blob) - 1]:
        with pytest.raises(FormatError):
            container.decompress(blob[:n], trained)


def test_trailing_garbage_is_refused(mixed_blob, trained):
    _, blob = mixed_blob
    for tail in (b"\x00", b"garbage", blob[:3], b"\x89MGZ"):
        with pytest.raises(FormatError, match="trailing|truncated|magic"):
            container.decompress(blob + tail, trained)


def test_any_flipped_header_byte_is_refused(mixed_blob):
    _, blob = mixed_blob
    size = parse(blob)["header_size"]
    for pos in range(size):
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[pos] ^= bit
            with pytest.raises(FormatError):
                container.scan(bytes(bad))


def test_flipped_payload_bytes_are_refused(mixed_blob, trained):
    """Stored and zstd payloads and the model stream: a flip is a FormatError (checksum or
    stream corruption), never wrong data returned silently."""
    data, blob = mixed_blob
    h = parse(blob)
    start = h["header_size"]
    stored = start
    zstd_at = start + h["segments"][3][1]
    stream = zstd_at + h["segments"][4][1]
    assert len(blob) - stream == sum(h["blocks"]) >= 8
    positions = [stored, stored + 50, zstd_at, (zstd_at + stream) // 2, stream - 1]
    positions += [stream, stream + 1, stream + 5, (stream + len(blob)) // 2, len(blob) - 1]
    for pos in positions:
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        with pytest.raises(FormatError):
            container.decompress(bytes(bad), trained)
    assert container.decompress(blob, trained) == data


def test_model_mismatch_is_refused_and_names_the_model(mixed_blob, trained, rand):
    _, blob = mixed_blob
    want = parse(blob)["model_hash"].hex()[:16]
    with pytest.raises(ModelMismatch, match=want):
        container.decompress(blob, rand)
    with pytest.raises(checkpoint.ModelNotFound, match="custom"):
        container.decompress(blob)  # the header names "custom": not installed


def test_a_file_without_model_segments_needs_no_model(rand, trained):
    data = random_bytes(5000, 5)
    blob = container.compress(data, rand)
    assert container.decompress(blob, trained) == data
    assert container.decompress(blob) == data


def binary_table(n: int) -> bytes:
    """Fixed-width binary records (a counter, a flag, a slowly rising value): what the
    adaptive stage alone codes better than the model."""
    out = bytearray()
    for i in range(-(-n // 12)):
        value = (1000 + i // 7).to_bytes(6, "little")
        out += i.to_bytes(4, "little") + bytes([i * 7 % 3, 0]) + value
    return bytes(out[:n])


def test_stage_segments_round_trip_and_follow_format_md(trained):
    """Where the adaptive stage alone wins, the frame is stage segments (flag STAGE, one
    segment per whole MiB); each payload is what FORMAT.md's arithmetic coder makes of the
    stage's probabilities (check_layout re-derives it), and no model is named."""
    data = binary_table(30_000)
    blob, stats = roundtrip(data, trained)
    h = check_layout(blob, data, trained)
    assert [s[0] for s in h["segments"]] == [STAGE] and h["flags"] == 1 | 4
    assert h["name"] == "" and h["stage"] == adaptive.ADAPTIVE_VERSION
    assert stats["stage_bytes"] == h["segments"][0][1] < len(zstd19(data)) // 2
    big = binary_table(2 * 1024 * 1024 + 1000)  # two segments, coded on their own
    blob = container.compress(big, trained, frame_size=1 << 23)
    frames = parse_file(blob)
    assert [(s[0], s[2]) for s in frames[0]["segments"]] == [(STAGE, 1049088), (STAGE, 1049064)]
    # the stage codes the first in fewer than 1/256 of its bytes: padded to that minimum
    # with FF bytes (what the decoder reads past a code's end), not given up for zstd
    assert frames[0]["segments"][0][1] == -(-1049088 // 256)
    assert container.decompress(blob, trained, threads=2) == big


def test_a_given_layout_or_no_adaptive_stage_never_makes_stage_segments(trained):
    data = binary_table(30_000)
    for options in (dict(segment_size=4096), dict(lanes=4), dict(adaptive=False)):
        blob, stats = roundtrip(data, trained, **options)
        assert "stage" not in stats["methods"], options


def test_the_stage_gives_up_where_it_is_behind():
    """encode_stage stops at a (position, size) limit it has reached, and only there."""
    data = binary_table(20_000)
    whole = adaptive.encode_stage(data)
    assert adaptive.decode_stage(whole, len(data)) == data
    assert adaptive.encode_stage(data, ((10_000, 10),)) is None
    assert adaptive.encode_stage(data, ((10_000, len(whole)), (15_000, len(whole)))) == whole
    assert adaptive.encode_stage(b"") == b"\x00\x00"  # record 0, the final byte
    assert adaptive.decode_stage(bytes(5), 0) == b""


def test_stage_frames_decode_without_the_model_or_torch(trained, tmp_path):
    """A frame of stage segments names no model: decoding it loads none (a fresh
    interpreter, a model name that does not exist)."""
    import subprocess
    import sys

    blob = container.compress(binary_table(20_000), trained)
    (tmp_path / "t.mgz").write_bytes(blob)
    code = (
        "import sys\n"
        "from megazip import container\n"
        f"data = container.decompress(open({str(tmp_path / 't.mgz')!r}, 'rb').read(), 'no-such')\n"
        "assert 'torch' not in sys.modules, 'imported'\n"
        "print(len(data))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 20_000


def test_damaged_stage_segments_are_format_errors(trained):
    data = binary_table(20_000)
    blob = container.compress(data, trained)
    h = parse(blob)
    at = h["header_size"]
    for pos in (0, 3, 4, 10, len(blob) - at - 2):  # record length, code
        bad = bytearray(blob)
        bad[at + pos] ^= 0x40
        with pytest.raises(FormatError):
            container.decompress(bytes(bad), trained)
    for bit in range(8):  # the final byte: its low bits may be slack, never wrong bytes
        bad = bytearray(blob)
        bad[-1] ^= 1 << bit
        with contextlib.suppress(FormatError):
            assert container.decompress(bytes(bad), trained) == data
    # a varint past 3 bytes, one that is not the shortest, a record length above 65535
    for head in (b"\xff\xff\xff\x00", b"\x80\x00", b"\x8c\x80\x00", b"\xff\xff\x7f"):
        with pytest.raises(FormatError, match="record length"):
            body = head + blob[at + len(head) :]
            container.decompress(reframe(blob, body=body), trained)
    (method, payload, length) = h["segments"][0]
    # too short, too long, too short for its length (more than 256 bytes per payload byte)
    for forged in (
        [(STAGE, 4, length)],
        [(STAGE, length, length)],
        [(STAGE, (length - 1) // 256, 0)],
    ):
        with pytest.raises(FormatError, match="corrupt header"):
            container.decompress(reframe(blob, segments=forged), trained)
    with pytest.raises(FormatError, match="segment table"):  # stage segments, no flag STAGE
        container.decompress(reframe(blob, flags=1, stage=0), trained)
    with pytest.raises(FormatError):  # STAGE without a stage version
        container.decompress(reframe(blob, stage=0), trained)


def test_format_2_and_3_files_still_decode_and_format_2_never_holds_stage_segments(
    mixed_blob, trained
):
    """Formats 2 and 3 name the model by its whole SHA-256 and write one segment table
    entry per segment; a reader of format 4 still reads them."""
    data, blob = mixed_blob
    full = bytes.fromhex(trained.content_hash())
    for version in (2, 3):
        old = reframe(blob, version=version, model_hash=full)
        assert len(old) == len(blob) + 24 + len(parse(blob)["segments"]) - 3
        assert container.decompress(old, trained) == data
    staged = container.compress(binary_table(20_000), trained)
    with pytest.raises(FormatError, match="flags"):
        container.decompress(reframe(staged, version=2), trained)


def test_checksum_is_verified(mixed_blob, trained):
    data, blob = mixed_blob
    with pytest.raises(FormatError, match="checksum"):
        container.decompress(reframe(blob, crc=parse(blob)["crc"] ^ 1), trained)
    with pytest.raises(FormatError):
        container.decompress(reframe(blob, length=len(data) + 1), trained)


def test_header_validation_rules(mixed_blob, trained):
    """Headers with a valid CRC but impossible fields are refused before any decoding."""
    data, blob = mixed_blob
    h = parse(blob)
    segs = h["segments"]
    body = blob[h["header_size"] :]
    bad = [
        dict(segment_size=0),
        dict(segment_size=len(data) + 1),
        dict(segment_size=1),  # more segments than the table holds
        dict(lanes=0),
        dict(lanes=MAX_LANES + 1),
        dict(length=MAX_FRAME + 1),
        dict(length=0),
        dict(index=1),
        dict(stage=2),
        dict(stage=99),
        dict(flags=h["flags"] & ~2),  # model segments without the MODEL flag
        dict(segments=segs[:-1]),  # the table is shorter than the segments
        dict(segments=[*segs[:-1], (3, *segs[-1][1:])]),  # unknown method
        dict(segments=[*segs[:-1], (ZSTD, 0, 100)]),  # an empty zstd payload
        dict(segments=[*segs[:-1], (ZSTD, 100, 100)]),  # zstd no smaller than storing
        dict(segments=[(STORED, 100, 100)] * 3 + segs[3:]),  # MODEL flag, no model segment
        dict(runs=[segs[:1], segs[1:3], segs[3:4], segs[4:]]),  # a method twice in a row
        dict(runs=[segs[:3], segs[3:4], segs[4:] * 2]),  # a run past the last segment
        dict(blocks=[]),  # block table does not match the model segments
        dict(blocks=[h["blocks"][0] + 4]),  # body shorter than declared
        dict(blocks=[h["blocks"][0] + 1]),  # not whole 32-bit words
        dict(blocks=[4]),  # 300 lane bytes from 4 stream bytes: beyond MAX_RATIO
        dict(blocks=[304]),  # a stream longer than its lanes
        dict(body=body + b"\0\0\0\0"),
    ]
    for change in bad:
        with pytest.raises(FormatError):
            container.decompress(reframe(blob, **change), trained)


def test_forged_lengths_fail_fast_without_allocating(mixed_blob, trained):
    """Every varint is read against its limit, and the body in pieces of at most 1 MiB,
    so a claim the file does not back costs neither memory nor time."""
    import tracemalloc

    _, blob = mixed_blob
    h = parse(blob)
    huge = [
        b"\x89MGZ\x02\x01\x00" + b"\xff" * 8 + b"\x7f",  # a length of 2^63 - 1
        b"\x89MGZ\x02\x01" + b"\xff" * 12,  # a varint longer than 9 bytes
        b"\x89MGZ\x02\x01\x00\x80\x00",  # not the shortest encoding
    ]
    # a stored segment of 64 MiB claimed in a file of a few bytes
    one = dict(
        h, flags=1, length=MAX_FRAME, segment_size=MAX_FRAME, segments=[(0, MAX_FRAME, MAX_FRAME)]
    )
    one["blocks"] = []
    huge.append(pack(one) + b"x" * 100)
    tracemalloc.start()
    try:
        for forged in huge:
            with pytest.raises(FormatError):
                container.decompress(forged, trained)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_a_damaged_model_stream_is_a_format_error(mixed_blob, trained):
    """Bug: constriction's AssertionError for data no encoder writes surfaced as a
    traceback; a flipped bit in every byte of the stream gives a FormatError (or, for the
    few bits of the last word that no symbol depends on, the original bytes)."""
    data, blob = mixed_blob
    h = parse(blob)
    start = h["header_size"] + sum(p for _, p, _ in h["segments"])
    unread = []
    for pos in range(start, len(blob)):
        for bit in (0x01, 0x80)[pos % 2 :][:1] + (0x10,)[: pos >= len(blob) - 8]:
            bad = bytearray(blob)
            bad[pos] ^= bit
            try:
                assert container.decompress(bytes(bad), trained) == data
                unread.append(pos)
            except FormatError:
                pass
    assert all(pos >= len(blob) - 4 for pos in unread), unread


def test_stored_and_zstd_payloads_must_match_their_lengths(trained):
    data = random_bytes(100, 6) + bytes(100)
    blob = container.compress(data, trained, segment_size=100, lanes=1, adaptive=False)
    h = parse(blob)
    assert [s[0] for s in h["segments"]] == [STORED, ZSTD]
    body = blob[h["header_size"] :]
    zs = body[100:]
    z99 = zstd19(bytes(99))
    cases = [
        # a zstd frame of 99 bytes where the segment has 100
        ([(STORED, 100, 100), (ZSTD, len(z99), 100)], body[:100] + z99),
        # a zstd frame of 101 bytes
        (
            [(STORED, 100, 100), (ZSTD, len(zstd19(bytes(101))), 100)],
            body[:100] + zstd19(bytes(101)),
        ),
        # not a zstd frame
        ([(STORED, 100, 100), (ZSTD, 5, 100)], body[:100] + b"\x28\xb5\x2f\xfd\x00"),
        ([(STORED, 100, 100), (ZSTD, len(zs), 100)], body[:100] + b"!" + zs[1:]),
    ]
    for segments, new_body in cases:
        forged = reframe(blob, segments=segments, body=new_body)
        with pytest.raises(FormatError):
            container.decompress(forged, trained)


def test_decoder_memory_is_bounded_by_frame_memory(trained):
    """FORMAT.md's bound on what decoding a model block allocates: the adaptive stage's
    state for B lanes of T bytes, and the model's KV caches per lane."""
    from megazip.adaptive import LaneModels

    for B, T, record in [(1, 64, 0), (64, 4096, 0), (16, 1 << 18, 0), (16, 1 << 18, 13)]:
        m = LaneModels(B, T, record)
        total = sum(a.nbytes for a in m.arrays())
        assert total - B * T <= B * container.STATE_PER_LANE + container.STATE_SHARED
    big = LaneModels(2, 1 << 22, 13)  # shared tables at their caps (a record block's: the most)
    assert sum(a.nbytes for a in big.arrays()) - 2 * (1 << 22) > 0.95 * container.STATE_SHARED
    cfg, P = trained.config, trained.config.patch_size
    state = trained.new_state(3)
    prev = torch.zeros(3, 1, P, dtype=torch.int64)
    for _ in range(2 * cfg.window + 1):  # past the window: the caches stay bounded
        trained.global_context(state, prev)
    kv = sum(c.k.nbytes + c.v.nbytes for c in state.caches)
    elem = state.caches[0].k.element_size()
    per_lane = 2 * cfg.global_layers * (2 * cfg.window - 1) * cfg.global_dim * elem
    assert kv <= 3 * per_lane
    frame = container.frame_memory(MAX_FRAME, MAX_LANES, cfg, elem)
    assert frame >= 3 * MAX_FRAME + MAX_LANES * per_lane + container.STATE_SHARED


def test_the_worked_example_of_format_md_is_what_megazip_writes():
    """docs/FORMAT.md's worked example: its code, run, gives its header dump and sizes,
    and the dump parses with the independent reader above."""
    import re

    doc = (ROOT / "docs" / "FORMAT.md").read_text().split("## Worked example", 1)[1]
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    dump = re.search(r"```\n(0{8}:.*?)```", doc, re.S).group(1)
    scope: dict = {}
    exec(code, scope)
    blob = scope["blob"]
    h = parse(blob)
    want = bytes.fromhex("".join(line[10:49].replace(" ", "") for line in dump.splitlines()))
    assert blob[: h["header_size"]] == want
    assert h["name"] == "tiny" and h["length"] == 512 and h["segment_size"] == 256
    assert [s[0] for s in h["segments"]] == [MODEL, STORED]
    assert f"The file is {len(blob)} bytes: a {h['header_size']}-byte header" in doc
    assert container.decompress(blob) == scope["text"] + scope["noise"]


def test_incompressible_input_never_runs_the_model_nor_imports_torch():
    """The quick "the model cannot help" decision: random bytes are stored without
    loading a model, or even importing torch (a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from megazip import container\n"
        "data = os.urandom(300_000)\n"
        "blob = container.compress(data, 'no-such-model')\n"
        "assert container.decompress(blob) == data\n"
        "assert 'torch' not in sys.modules and 'numba' not in sys.modules, 'imported'\n"
        "print(len(blob) - len(data))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 22  # one stored frame: its header


def test_the_header_of_an_empty_or_tiny_input_is_about_zstds_frame():
    """An empty input is 12 bytes (zstd's frame with its checksum: 13); 3,000 random bytes
    cost 20 bytes of header (zstd: 14)."""
    assert len(container.compress(b"")) == 12
    assert container.decompress(container.compress(b"")) == b""
    data = random_bytes(3000, 40)
    assert len(container.compress(data)) == 3020
    z = zstandard.ZstdCompressor(level=19, write_checksum=True)
    assert len(z.compress(b"")) == 13 and len(z.compress(data)) == 3014


def test_a_zstd_payload_claiming_a_huge_size_costs_no_memory(trained):
    """Bug (found by bench/fuzz.py): a damaged zstd frame header claiming a content size
    of 2^40 made ZstdDecompressor.decompress raise MemoryError (a traceback from the
    CLI); the payload is now read through a bounded stream reader."""
    import tracemalloc

    data = random_bytes(100, 41) + bytes(100)
    blob = container.compress(data, trained, segment_size=100, lanes=1, adaptive=False)
    h = parse(blob)
    assert [s[0] for s in h["segments"]] == [STORED, ZSTD]
    z = blob[h["header_size"] + 100 :]
    forged_z = b"\x28\xb5\x2f\xfd\xe0" + (1 << 40).to_bytes(8, "little") + z[6:]
    segments = [h["segments"][0], (ZSTD, len(forged_z), 100)]
    forged = reframe(blob, segments=segments, body=blob[h["header_size"] :][:100] + forged_z)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="zstd"):
            container.decompress(forged, trained)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_blas_runs_one_thread_while_coding_and_the_callers_setting_comes_back():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with container.blas_one_thread():
        inside = blas_threads()
    assert inside and all(n == 1 for n in inside), inside
    assert blas_threads() == before
