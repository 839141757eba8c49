"""The torch-free integer model (megazip/npmodel.py) against the reference IntMegabyte.

NpMegabyte must give exactly IntMegabyte's tables (np.array_equal), teacher-forced in
any chunking and byte by byte (the fused one-call local step up to FUSED_MAX_LANES lanes
and the layer-by-layer step beyond), on random, saturated and trained weights, worst-case
and text inputs, several batch sizes and lengths; and the CPU coding path must not
import torch at all.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from helpers import CFG, KINDS, P, random_int_model, special_lane, trained_pair, word_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_intmodel import saturate

from megazip import checkpoint, coder, container, npmodel
from megazip.npmodel import NpMegabyte

pytestmark = pytest.mark.usefixtures("one_thread")
WINDOW_BYTES = CFG.window * P


def reference(int_model, lanes: np.ndarray, chunk_patches: int = 64) -> np.ndarray:
    t = torch.from_numpy(lanes)
    return torch.cat([c for _, c in int_model.count_tables(t, chunk_patches)], 1).numpy()


def np_tables(m: NpMegabyte, lanes: np.ndarray, chunk_patches: int = 64) -> np.ndarray:
    return np.concatenate([c for _, c in m.count_tables(lanes, chunk_patches)], 1)


def kinds_lanes(T: int, copies: int = 1) -> np.ndarray:
    rows = [special_lane(k, T, seed=i) for i in range(copies) for k in KINDS]
    return np.array(rows, dtype=np.int64)


def check(int_model, lanes: np.ndarray, chunks=(1, 5, 64), incremental=True):
    ref = reference(int_model, lanes)
    m = NpMegabyte.from_int_model(int_model)
    assert m.content_hash() == int_model.content_hash()
    for chunk in chunks:
        assert np.array_equal(np_tables(m, lanes, chunk), ref), f"chunk {chunk}"
    if incremental:
        assert np.array_equal(m.counts_incremental(lanes), ref)
    return ref


@pytest.mark.parametrize("seed,scale", [(0, 0.2), (3, 0.5), (5, 1.0)])
def test_tables_equal_the_reference_on_worst_case_inputs(seed, scale):
    check(random_int_model(seed, scale), kinds_lanes(WINDOW_BYTES + 8 * P))


@pytest.mark.parametrize("fused_max", [2, 1 << 30])
@pytest.mark.parametrize("lanes", [1, 3, 17, 65])
def test_every_batch_size_both_local_steps(monkeypatch, lanes, fused_max):
    """Up to FUSED_MAX_LANES lanes the decoder's local step is one fused call, beyond it
    layer by layer: both equal the reference, byte by byte, at every batch size."""
    monkeypatch.setattr(npmodel, "FUSED_MAX_LANES", fused_max)
    rng = np.random.default_rng(lanes)
    x = rng.integers(0, 256, (lanes, 6 * P), dtype=np.int64)
    x[0] = list(word_text(lanes, 6 * P))
    check(random_int_model(2, 0.5), x, chunks=(2, 64))


@pytest.mark.parametrize("pattern", ["plus", "minus", "checker"])
def test_saturated_weights(pattern):
    check(saturate(random_int_model(5, 1.0), pattern), kinds_lanes(WINDOW_BYTES + 4 * P))


def test_trained_model_on_text():
    _, int_model = trained_pair()
    lanes = np.array([list(word_text(s, 40 * P)) for s in range(4)], dtype=np.int64)
    check(int_model, lanes)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 11),
    patches=st.integers(1, 30),
    chunk=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_batches_and_lengths(B, patches, chunk, seed):
    rng = np.random.default_rng(seed)
    lanes = rng.integers(0, 256, (B, patches * P), dtype=np.int64)
    int_model = random_int_model(seed % 3, 0.5)
    check(int_model, lanes, chunks=(chunk,), incremental=B <= 3)


def test_shipped_model_loads_without_torch_with_the_same_identity_and_tables():
    path = checkpoint.int_model_path(checkpoint.DEFAULT_MODEL)
    ref_model = checkpoint.load_int_model(checkpoint.DEFAULT_MODEL)
    m = NpMegabyte.load(path)
    assert m.content_hash() == ref_model.content_hash()
    text = (ROOT / "README.md").read_bytes()
    P8 = m.config.patch_size
    lanes = np.frombuffer(text[: 2 * 64 * P8], np.uint8).reshape(2, -1).astype(np.int64)
    ref = reference(ref_model, lanes)
    assert np.array_equal(np_tables(m, lanes, 16), ref)
    assert np.array_equal(m.counts_incremental(lanes[:, : 8 * P8]), ref[:, : 8 * P8])


def test_pickled_model_is_the_same_model():
    import pickle

    m = NpMegabyte.from_int_model(random_int_model(1, 0.5))
    again = pickle.loads(pickle.dumps(m))
    assert again.content_hash() == m.content_hash()
    lanes = kinds_lanes(4 * P)
    assert np.array_equal(np_tables(again, lanes), np_tables(m, lanes))


def test_both_model_kinds_code_the_same_bytes():
    """A block coded with IntMegabyte (torch) and with NpMegabyte: the same stream, and
    each decodes the other's."""
    _, int_model = trained_pair()
    m = NpMegabyte.from_int_model(int_model)
    segments = [word_text(s, 300 + 37 * s) for s in range(3)]
    a, bits_a = coder.encode_block(int_model, segments)
    b, bits_b = coder.encode_block(m, segments)
    assert a == b and np.allclose(bits_a, bits_b, rtol=1e-12)
    lengths = [len(s) for s in segments]
    assert coder.decode_block(m, a, lengths) == segments
    assert coder.decode_block(int_model, b, lengths) == segments


def test_container_picks_numpy_on_the_cpu():
    m, _ = container._int_model(checkpoint.DEFAULT_MODEL, "cpu")
    assert isinstance(m, NpMegabyte)
    if not container.cuda_available():
        assert isinstance(container._int_model(checkpoint.DEFAULT_MODEL, "auto")[0], NpMegabyte)


NO_TORCH = """
import sys
from megazip.cli.main import main
for args in (["compress", "-q", "-f", "--lanes", "4", sys.argv[1], "-o", sys.argv[2]],
             ["decompress", "-q", "-f", sys.argv[2], "-o", sys.argv[3]],
             ["test", "-q", sys.argv[2]]):
    try:
        main(args)
    except SystemExit as e:
        assert not e.code, e.code
assert "torch" not in sys.modules, "torch was imported"
print("no torch")
"""


def test_cpu_coding_path_never_imports_torch(tmp_path):
    """The model path (a layout is given, so no stage frame is tried) runs without torch."""
    src, packed, back = tmp_path / "t.txt", tmp_path / "t.mgz", tmp_path / "t.out"
    src.write_bytes(word_text(7, 3000))
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(src), str(packed), str(back)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no torch" in r.stdout
    assert back.read_bytes() == src.read_bytes()
    assert container.MODEL in {s.method for s in container.scan(packed.read_bytes()).segments}


def test_lane_groups_on_threads_decode_the_same():
    """decode_block with the model's lanes split over threads (npmodel.LaneGroups)."""
    _, int_model = trained_pair()
    m = NpMegabyte.from_int_model(int_model)
    n = 2 * npmodel.MIN_GROUP_LANES + 3
    segments = [word_text(100 + s, 40 + 3 * s) for s in range(n)]
    stream, _ = coder.encode_block(m, segments)
    lengths = [len(s) for s in segments]
    for threads in (1, 2, 3):
        assert coder.decode_block(m, stream, lengths, lane_threads=threads) == segments
    with npmodel.LaneGroups(m, n, 3) as g:
        assert len(g.groups) == 2
        lanes = np.array([list(s[:40]) for s in segments], dtype=np.int64)
        states = g.new_state(n)
        ctx = g.global_context(states, lanes[:, :P].reshape(n, 1, P))
        ref_state = m.new_state(n)
        assert np.array_equal(ctx, m.global_context(ref_state, lanes[:, :P].reshape(n, 1, P)))


def test_split_decoder_decodes_the_same():
    """decode_block from coder.SPLIT_MIN_LANES lanes with lane_threads=2: model and mix on
    two threads (coder._decode_steps_split), lanes of unequal lengths ending mid-patch."""
    _, int_model = trained_pair()
    m = NpMegabyte.from_int_model(int_model)
    n = coder.SPLIT_MIN_LANES + 1
    segments = [word_text(200 + s, 30 + 5 * s) for s in range(n)]
    stream, _ = coder.encode_block(m, segments)
    lengths = [len(s) for s in segments]
    assert coder.decode_block(m, stream, lengths, lane_threads=2) == segments


def test_cpu_model_can_be_the_torch_one(monkeypatch):
    """MEGAZIP_CPU_MODEL=torch: the CPU path loads the torch IntMegabyte instead."""
    from megazip.intmodel import IntMegabyte

    monkeypatch.setenv("MEGAZIP_CPU_MODEL", "torch")
    container.clear_model_cache()
    try:
        assert isinstance(container._int_model(checkpoint.DEFAULT_MODEL, "cpu")[0], IntMegabyte)
    finally:
        container.clear_model_cache()


@pytest.mark.parametrize("fused_max", [2, 64])
@pytest.mark.parametrize("vnni", [False, True])
def test_tables_equal_with_and_without_the_vnni_gemm(monkeypatch, vnni, fused_max):
    """Where the CPU has AVX-512 VNNI the linears use the int8 GEMM (nbkernels.
    gemm_vnni), also inside the fused local step; without it numba's float32 GEMM or
    BLAS: the same tables, layer by layer (fused_max 2) and fused (64)."""
    from megazip import nbkernels

    if vnni and not nbkernels.VNNI:
        pytest.skip("this CPU has no AVX-512 VNNI")
    monkeypatch.setattr(nbkernels, "VNNI", vnni)
    monkeypatch.setattr(npmodel, "FUSED_MAX_LANES", fused_max)
    int_model = saturate(random_int_model(5, 1.0), "checker")
    lanes = kinds_lanes(WINDOW_BYTES + 4 * P)
    check(int_model, lanes, chunks=(3, 64))
    m = NpMegabyte.from_int_model(int_model)
    assert all((b.qkv.vnni is not None) == vnni for b in m.global_blocks)


def test_vnni_gemm_is_exact_at_the_extremes():
    from megazip import nbkernels

    if not nbkernels.VNNI:
        pytest.skip("this CPU has no AVX-512 VNNI")
    rng = np.random.default_rng(3)
    for M, K, N in [(1, 1, 1), (3, 5, 70), (9, 1024, 64), (5, 3000, 130)]:
        for xs, ws in [(127, 127), (-127, 127), (-127, -127), (None, None)]:
            x = rng.integers(-127, 128, (M, K)) if xs is None else np.full((M, K), xs)
            w = rng.integers(-127, 128, (K, N)) if ws is None else np.full((K, N), ws)
            wp, cs = nbkernels.pack_vnni(w.astype(np.int8))
            out = np.empty((M, N), np.int32)
            nbkernels.gemm_vnni(x.astype(np.float32), wp, cs, out)
            assert np.array_equal(out, x @ w)
