"""Speed-related behaviour that must not change the bytes: what a command imports (the
stored/zstd path starts without torch or numba), and identical output whatever the number
of worker threads. Speed itself is shown by bench/speed.py, never by timed tests."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import megazip_cmd
from helpers import random_int_model, trained_pair, word_text

from megazip import container
from megazip.modelspec import ADAPTIVE_VERSION

CHECK_IMPORTS = """
import sys
from megazip.cli.main import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "numba", "constriction") if m in sys.modules)
    print("imported:", ",".join(heavy) or "-")
"""


@pytest.fixture(scope="module")
def rand():
    return random_int_model(0, 0.2)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHECK_IMPORTS, *map(str, args)],
        capture_output=True,
        timeout=300,
    )


def binary_records(n: int) -> bytes:
    """n records of 12 bytes (a counter, a small field, a slowly rising value): data the
    adaptive stage alone codes best."""
    return b"".join(
        i.to_bytes(4, "little") + bytes([i * 7 % 3, 0]) + (1000 + i // 7).to_bytes(6, "little")
        for i in range(n)
    )


@pytest.mark.parametrize("kind", ["stored", "zstd", "stage"])
def test_decompressing_without_the_model_imports_no_torch(rand, tmp_path, kind):
    """Stored and zstd frames decode without torch or numba; stage frames (the adaptive
    stage alone) with numba only."""
    data = {
        "stored": __import__("os").urandom(5000),
        "zstd": bytes(range(256)) * 64,
        "stage": binary_records(2000),
    }[kind]
    blob = container.compress(data, rand, adaptive=kind != "zstd")
    info = container.scan(blob)
    methods = {container.METHOD_NAMES[s.method] for f in info.frames for s in f.segments}
    assert methods == {kind}
    packed = tmp_path / "x.mgz"
    packed.write_bytes(blob)
    for cmd in (["decompress", packed, "-o", tmp_path / "x"], ["test", packed], ["info", packed]):
        r = run_cli(*cmd)
        assert r.returncode == 0, r.stderr.decode()
        heavy = "numba" if kind == "stage" and cmd[0] != "info" else "-"
        assert r.stdout.decode().splitlines()[-1] == f"imported: {heavy}", (cmd, r.stdout)
        if cmd[0] == "info" and kind == "stage":  # no model; the stage's version
            assert "none needed" in r.stdout.decode()
            assert f"adaptive stage   version {ADAPTIVE_VERSION}" in r.stdout.decode()
    assert (tmp_path / "x").read_bytes() == data


@pytest.fixture(scope="module")
def trained():
    return trained_pair()[1]


def test_output_is_identical_for_any_number_of_threads(trained, monkeypatch):
    """Worker processes over blocks (-T 2) and the encoder's model-ahead thread give the
    bytes of one thread; both decode back, in this process and in workers."""
    monkeypatch.setattr(container, "PARALLEL_MIN_BYTES", 0)  # workers even for a small input
    data = word_text(3, 6000) + bytes(range(256)) * 4
    layout = {"segment_size": 700, "lanes": 3}  # 10 segments: 4 blocks
    one = container.compress(data, trained, threads=1, **layout)
    assert len(container.scan(one).frames[0].blocks) >= 3
    assert container.compress(data, trained, threads=2, **layout) == one
    monkeypatch.setattr(container, "PARALLEL_MIN_BYTES", 1 << 40)  # in this process
    assert container.compress(data, trained, threads=2, **layout) == one  # model ahead
    assert container.decompress(one, trained, threads=1) == data
    monkeypatch.setattr(container, "PARALLEL_MIN_BYTES", 0)
    assert container.decompress(one, trained, threads=2) == data


def test_stage_frames_are_identical_for_any_number_of_threads(trained, monkeypatch):
    """Stage segments coded and decoded in worker processes (-T 2) give the bytes of one
    thread (stage segments of 64 KiB here, so that a small input has three)."""
    monkeypatch.setattr(container, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(container, "BLOCK_BYTES", 1 << 16)
    data = binary_records(17_000)
    one = container.compress(data, trained, threads=1)
    assert [s.method for s in container.scan(one).segments] == [container.STAGE] * 3
    assert container.compress(data, trained, threads=2) == one
    assert container.decompress(one, trained, threads=2) == data


def test_two_decoding_threads_give_the_bytes_of_one(trained, monkeypatch):
    """decode_block's two-thread loop (the model of half of the lanes on a worker, beside
    the adaptive update) decodes what one thread decodes, also as lanes end one by one,
    and an error on the worker reaches the caller (the worker stopped)."""
    from megazip import coder
    from megazip.npmodel import NpMegabyte

    trained = NpMegabyte.from_int_model(trained)  # the numpy model: the CPU's decoder
    monkeypatch.setattr(coder, "SPLIT_MIN_LANES", 4)
    split = coder._decode_steps_split
    calls = []
    monkeypatch.setattr(coder, "_decode_steps_split", lambda *a: calls.append(1) or split(*a))
    text = word_text(11, 3000)
    segments = [text[i * 97 : i * 97 + 40 + 13 * i] for i in range(9)]  # ragged lanes
    stream, _ = coder.encode_block(trained, segments)
    lengths = [len(s) for s in segments]
    assert coder.decode_block(trained, stream, lengths, lane_threads=1) == segments
    assert coder.decode_block(trained, stream, lengths, lane_threads=2) == segments
    assert calls == [1]
    begin = coder.adaptive_stage.begin

    def failing(models, counts, active, lo=0):  # the worker's lanes fail at one step
        if lo and models.lane[lo, 0] == 30:
            raise RuntimeError("worker failed")
        begin(models, counts, active, lo)

    monkeypatch.setattr(coder.adaptive_stage, "begin", failing)
    with pytest.raises(RuntimeError, match="worker failed"):  # handed on, nothing hangs
        coder.decode_block(trained, stream, lengths, lane_threads=2)


def test_cli_threads_give_the_same_file(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(word_text(5, 5000))
    outs = []
    for t in ("1", "2"):
        out = tmp_path / f"t{t}.mgz"
        r = subprocess.run(
            [*megazip_cmd("compress", "-q", "-T", t, str(src), "-o", str(out))],
            capture_output=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr.decode()
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    back = tmp_path / "back.txt"
    r = subprocess.run(
        megazip_cmd("decompress", "-q", "-T", "2", str(tmp_path / "t2.mgz"), "-o", str(back)),
        capture_output=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert back.read_bytes() == src.read_bytes()


def ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def test_default_layout_by_frame_size():
    assert container.default_layout(0) == (2048, 1)
    assert container.default_layout(1024) == (2048, 1)
    assert container.default_layout(1 << 16) == (2048, 32)  # small: 32 lanes
    assert container.default_layout(150_000) == (8192, 19)
    assert container.default_layout(769_000) == (16384, 47)  # one block below 2 MiB
    assert container.default_layout(3 << 20) == (16384, 64)  # three blocks of 1 MiB
    for n in (1, 5000, 1 << 20, 3 << 20, container.FRAME_SIZE, container.MAX_FRAME):
        seg, lanes = container.default_layout(n)
        blocks = ceil_div(ceil_div(n, seg), lanes)
        assert seg % container.SEGMENT_ALIGN == 0 and 0 < seg <= container.MAX_FRAME
        assert 0 < lanes <= container.MAX_LANES
        assert ceil_div(n, seg) <= container.MAX_SEGMENTS
        assert blocks <= max(1, n // container.BLOCK_BYTES) + 1


def test_many_lanes_code_in_smaller_chunks_with_the_same_stream(trained):
    from megazip import coder

    assert coder.chunk_patches_for(1) == coder.CHUNK_PATCHES
    assert coder.chunk_patches_for(32) == coder.CHUNK_POSITIONS // (32 * 8)
    assert coder.chunk_patches_for(1000) == 1
    lanes = [word_text(i, 40 + 7 * i) for i in range(130)]  # 130 lanes: 1-patch chunks
    auto, bits = coder.encode_block(trained, lanes)
    fixed, fixed_bits = coder.encode_block(trained, lanes, chunk_patches=coder.CHUNK_PATCHES)
    assert auto == fixed
    assert coder.decode_block(trained, auto, [len(x) for x in lanes]) == lanes


def test_two_thread_mixing_gives_the_same_bytes(trained, monkeypatch):
    """From coder.SPLIT_MIN_LANES lanes, -T 2 in this process decodes on two threads
    (coder._decode_steps_split), and the encoder runs its model a chunk ahead: the bytes
    of one thread, decoded back."""
    from megazip import coder
    from megazip.npmodel import NpMegabyte

    monkeypatch.setattr(container, "PARALLEL_MIN_BYTES", 1 << 40)  # no worker processes
    model = NpMegabyte.from_int_model(trained)
    data = word_text(7, 5000)
    layout = {"segment_size": 256, "lanes": coder.SPLIT_MIN_LANES + 4}
    one = container.compress(data, model, threads=1, **layout)
    frame = container.scan(one).frames[0]
    assert sum(s.method == container.MODEL for s in frame.segments) >= coder.SPLIT_MIN_LANES
    assert container.compress(data, model, threads=2, **layout) == one
    assert container.decompress(one, model, threads=2) == data
