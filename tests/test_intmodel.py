"""The exactness contract of the integer coding model (megazip/intmodel.py).

A range decoder reproduces the input only if it sees exactly the count tables the encoder
used. These tests demand bit-identical tables (torch.equal) for: the whole sequence in
any chunking vs byte by byte, one lane vs a batch of many, 1 vs 2 threads, every CPU
kernel backend, a save/load round trip, and (with a GPU) CPU vs CUDA; on random weights
and inputs drawn by hypothesis, worst-case bytes and saturated int8 weights included.

The shared models and inputs (random_int_model, trained_pair, word_text, KINDS) live in
tests/helpers.py.
"""

from __future__ import annotations

import copy
import math

import numba
import numpy as np
import pytest
import torch
from helpers import (
    CFG,
    KINDS,
    P,
    clone,
    perturbed_model,
    random_int_model,
    special_lane,
    trained_pair,
    word_text,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megazip import intmodel
from megazip.evaluate import float_bits, int_bits
from megazip.export import export, load_int_model, save_int_model
from megazip.intmodel import COUNT_TOTAL, IntMegabyte, int_matmul
from megazip.kernels import NumbaKernels, TorchKernels, isqrt

WINDOW_BYTES = CFG.window * P
SLOW_EXAMPLES = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------------------ helpers

pytestmark = pytest.mark.usefixtures("one_thread")


def worst_case_lanes(T: int) -> torch.Tensor:
    rnd = torch.randint(0, 256, (T,), generator=torch.Generator().manual_seed(7)).tolist()
    return torch.tensor([special_lane(k, T) for k in KINDS] + [rnd], dtype=torch.int64)


def full_tables(int_model: IntMegabyte, lanes: torch.Tensor, chunk_patches: int) -> torch.Tensor:
    """count_tables concatenated; checks that the chunks' start offsets are contiguous."""
    parts, at = [], 0
    for start, counts in int_model.count_tables(lanes, chunk_patches):
        assert start == at, "count_tables chunks are not contiguous"
        parts.append(counts.cpu())
        at += counts.shape[1]
    assert at == lanes.shape[1]
    return torch.cat(parts, 1)


def assert_valid(counts: torch.Tensor, B: int, T: int) -> None:
    assert counts.dtype == torch.int64
    assert tuple(counts.shape) == (B, T, 256)
    assert int(counts.min()) >= 1, "a count table has a zero entry"
    sums = counts.sum(-1)
    assert torch.all(sums == COUNT_TOTAL), f"row sums {sums.unique().tolist()} != 2^24"


BACKENDS = [TorchKernels, NumbaKernels]  # the CPU kernel backends; TorchKernels: reference


def on_backend(int_model: IntMegabyte, kernels) -> IntMegabyte:
    return clone(int_model).to("cpu", kernels=kernels)


# ---------------------------------------------------------------- strategies and inputs


@st.composite
def lane_batches(draw, max_lanes: int = 3, max_patches: int = 40):
    """(B, T) int64 lanes, T = a multiple of P up to past the global window; each lane is
    hypothesis bytes or one of the worst-case patterns."""
    B = draw(st.integers(1, max_lanes))
    T = draw(st.integers(1, max_patches)) * P
    lanes = []
    for _ in range(B):
        kind = draw(st.sampled_from(["bytes", "bytes", *KINDS]))
        if kind == "bytes":
            lanes.append(list(draw(st.binary(min_size=T, max_size=T))))
        else:
            lanes.append(special_lane(kind, T, seed=draw(st.integers(0, 99))))
    return torch.tensor(lanes, dtype=torch.int64)


seeds = st.integers(0, 2**16 - 1)
scales = st.sampled_from([0.05, 0.2, 0.5, 1.0])


# --------------------------------------------------------- full vs incremental, batching


@SLOW_EXAMPLES
@given(seed=seeds, scale=scales, lanes=lane_batches())
def test_full_sequence_in_any_chunking_equals_byte_by_byte(seed, scale, lanes):
    int_model = random_int_model(seed, scale)
    B, T = lanes.shape
    inc = int_model.counts_incremental(lanes).cpu()
    assert_valid(inc, B, T)
    for chunk in (1, 3, 64):
        full = full_tables(int_model, lanes, chunk)
        assert_valid(full, B, T)
        assert torch.equal(full, inc), f"chunk_patches={chunk} differs from byte by byte"


@SLOW_EXAMPLES
@given(seed=seeds, scale=scales, lanes=lane_batches(max_lanes=5, max_patches=24))
def test_a_lanes_tables_do_not_depend_on_the_other_lanes(seed, scale, lanes):
    int_model = random_int_model(seed, scale)
    B, T = lanes.shape
    batch = full_tables(int_model, lanes, 64)
    perm = torch.randperm(B)
    shuffled = full_tables(int_model, lanes[perm], 5)
    assert torch.equal(shuffled, batch[perm])
    for i in range(B):
        alone = full_tables(int_model, lanes[i : i + 1], 64)
        assert torch.equal(alone[0], batch[i]), f"lane {i} changed by its neighbours"
    # a decoder's view: byte by byte, many lanes at once
    inc = int_model.counts_incremental(torch.cat([lanes, lanes.flip(0)]))
    assert torch.equal(inc[:B].cpu(), batch)
    assert torch.equal(inc[B:].cpu(), batch.flip(0))


@pytest.mark.parametrize("kernels", BACKENDS, ids=lambda k: k.__name__)
def test_worst_case_inputs_on_every_backend(kernels):
    T = WINDOW_BYTES + 12 * P  # past the global window
    lanes = worst_case_lanes(T)
    int_model = on_backend(random_int_model(3, 1.0), kernels)
    reference = full_tables(on_backend(random_int_model(3, 1.0), TorchKernels), lanes, 64)
    assert_valid(reference, *lanes.shape)
    inc = int_model.counts_incremental(lanes).cpu()
    assert torch.equal(inc, reference)
    for chunk in (1, 3, 64):
        assert torch.equal(full_tables(int_model, lanes, chunk), reference)
    for i in range(len(lanes)):
        assert torch.equal(full_tables(int_model, lanes[i : i + 1], 7)[0], reference[i])


def saturate(int_model: IntMegabyte, pattern: str) -> IntMegabyte:
    """The same model with every int8 weight tensor (*.w) set to +-127."""
    tensors = dict(int_model.tensors)
    g = torch.Generator().manual_seed(11)
    n = 0
    for name, w in int_model.tensors.items():
        if not name.endswith(".w"):
            continue
        n += 1
        idx = torch.arange(w.numel()).reshape(w.shape)
        if pattern == "plus":
            sign = torch.ones(w.shape, dtype=torch.bool)
        elif pattern == "minus":
            sign = torch.zeros(w.shape, dtype=torch.bool)
        elif pattern == "checker":
            sign = (idx + idx // w.shape[-1]) % 2 == 0
        else:
            sign = torch.rand(w.shape, generator=g) < 0.5
        tensors[name] = torch.where(sign, 127, -127).to(w.dtype)
    assert n >= 10, "expected int8 weight tensors named *.w"
    return IntMegabyte(int_model.config, tensors, dict(int_model.ints))


@pytest.mark.parametrize("pattern", ["plus", "minus", "checker", "random"])
def test_saturated_int8_weights_give_valid_identical_tables(pattern):
    sat = saturate(random_int_model(5, 1.0), pattern)
    assert sat.content_hash() != random_int_model(5, 1.0).content_hash()
    T = WINDOW_BYTES + 8 * P
    lanes = worst_case_lanes(T)
    inc = sat.counts_incremental(lanes).cpu()
    assert_valid(inc, *lanes.shape)
    for chunk in (1, 3, 64):
        assert torch.equal(full_tables(sat, lanes, chunk), inc)
    for kernels in BACKENDS:
        assert torch.equal(full_tables(on_backend(sat, kernels), lanes, 64), inc)
    assert torch.equal(full_tables(sat, lanes[2:3], 64)[0], inc[2])


def test_one_and_two_threads_give_identical_tables():
    int_model = random_int_model(9, 0.5)
    lanes = torch.randint(
        0, 256, (16, WINDOW_BYTES + 8 * P), generator=torch.Generator().manual_seed(0)
    )
    lanes[:4] = worst_case_lanes(lanes.shape[1])[:4]
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
            full = full_tables(int_model, lanes, 64)
            inc = int_model.counts_incremental(lanes[:, : 12 * P]).cpu()
            results.append((full, inc))
    finally:
        torch.set_num_threads(before)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert torch.get_num_threads() == before
    (f1, i1), (f2, i2) = results
    assert_valid(f1, *lanes.shape)
    assert torch.equal(f1, f2)
    assert torch.equal(i1, i2)
    assert torch.equal(i1, f1[:, : 12 * P])


def test_tables_survive_save_and_load(tmp_path):
    int_model = random_int_model(2, 0.5)
    path = save_int_model(int_model, tmp_path / "int_model.safetensors")
    loaded = load_int_model(path)
    assert loaded.content_hash() == int_model.content_hash()
    lanes = worst_case_lanes(10 * P)
    assert torch.equal(full_tables(loaded, lanes, 3), full_tables(int_model, lanes, 64))


def test_content_hash_is_stable_and_sees_every_change():
    a, b = random_int_model(4, 0.2), random_int_model(4, 0.2)
    assert a.content_hash() == b.content_hash()
    assert len(a.content_hash()) == 64 and int(a.content_hash(), 16) >= 0
    assert random_int_model(5, 0.2).content_hash() != a.content_hash()
    name = sorted(n for n in a.tensors if n.endswith(".mult"))[0]
    tensors = dict(a.tensors)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1  # one integer, one unit
    changed = IntMegabyte(a.config, tensors, dict(a.ints))
    assert changed.content_hash() != a.content_hash()
    ints = dict(a.ints)
    key = sorted(ints)[0]
    ints[key] += 1
    assert IntMegabyte(a.config, dict(a.tensors), ints).content_hash() != a.content_hash()
    assert clone(a).to("cpu").content_hash() == a.content_hash()


def test_to_another_backend_returns_a_moved_copy_and_leaves_the_model_alone():
    int_model = on_backend(random_int_model(6, 0.5), TorchKernels)
    lanes = worst_case_lanes(6 * P)
    reference = full_tables(int_model, lanes, 64)
    moved = int_model.to("cpu", kernels=NumbaKernels)
    assert moved is not int_model and moved.kernels is NumbaKernels
    assert int_model.kernels is TorchKernels and int_model.device.type == "cpu"
    assert moved.to("cpu", kernels=NumbaKernels) is moved  # already there: itself
    assert torch.equal(full_tables(moved, lanes, 64), reference)
    assert torch.equal(full_tables(int_model, lanes, 64), reference)


def test_export_leaves_the_float_model_as_it_was():
    model = perturbed_model(8, 0.2).to(torch.bfloat16).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = torch.randint(0, 256, (4, 16 * P), generator=torch.Generator().manual_seed(8))
    int_model = export(model, calibration)
    assert model.training
    after = model.state_dict()
    assert all(after[k].dtype == torch.bfloat16 for k in after)
    assert all(torch.equal(after[k], before[k]) for k in before)
    # the same integers as exporting a float32 copy
    assert (
        int_model.content_hash() == export(copy.deepcopy(model).float(), calibration).content_hash()
    )


def test_exact_matmuls_are_set_only_while_the_model_runs_and_restored():
    """The integer model needs IEEE float32 GEMMs; a caller that allowed bf16/TF32 ones
    gets the same tables, and its settings back afterwards."""
    cpu, cuda = torch.backends.mkldnn.matmul, torch.backends.cuda.matmul
    int_model = random_int_model(7, 0.5)
    lanes = worst_case_lanes(6 * P)
    reference = full_tables(int_model, lanes, 64)
    saved = cpu.fp32_precision, cuda.fp32_precision
    try:
        cpu.fp32_precision, cuda.fp32_precision = "bf16", "tf32"
        seen = []
        for _, counts in int_model.count_tables(lanes, 2):
            seen.append(counts)
            assert (cpu.fp32_precision, cuda.fp32_precision) == ("bf16", "tf32")
        assert torch.equal(torch.cat(seen, 1), reference)
        with intmodel.exact_float32_matmuls():
            assert (cpu.fp32_precision, cuda.fp32_precision) == ("ieee", "ieee")
            assert torch.equal(int_model.counts_incremental(lanes), reference)
            assert (cpu.fp32_precision, cuda.fp32_precision) == ("ieee", "ieee")  # nested
        assert (cpu.fp32_precision, cuda.fp32_precision) == ("bf16", "tf32")
        IntMegabyte(int_model.config, dict(int_model.tensors), dict(int_model.ints))
        assert (cpu.fp32_precision, cuda.fp32_precision) == ("bf16", "tf32")
    finally:
        cpu.fp32_precision, cuda.fp32_precision = saved


# ------------------------------------------------------------------- exact primitives


def _int8_array(rng: np.random.Generator, shape, mode: str) -> np.ndarray:
    if mode == "plus":
        return np.full(shape, 127, dtype=np.int64)
    if mode == "minus":
        return np.full(shape, -127, dtype=np.int64)
    if mode == "extreme":
        return rng.choice([-127, 127], size=shape).astype(np.int64)
    return rng.integers(-127, 128, size=shape, dtype=np.int64)


@settings(max_examples=40, deadline=None)
@given(
    K=st.sampled_from([1, 2, 31, 1023, 1024, 1025, 1500, 2047, 2048, 3000]),
    M=st.integers(1, 5),
    N=st.integers(1, 9),
    xmode=st.sampled_from(["random", "plus", "minus", "extreme"]),
    wmode=st.sampled_from(["random", "plus", "minus", "extreme"]),
    xdtype=st.sampled_from([torch.int8, torch.int64, torch.float32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_int_matmul_is_exact(K, M, N, xmode, wmode, xdtype, seed):
    rng = np.random.default_rng(seed)
    x = _int8_array(rng, (M, K), xmode)
    w = _int8_array(rng, (K, N), wmode)
    ref = x @ w  # numpy int64: exact
    out = int_matmul(torch.from_numpy(x).to(xdtype), torch.from_numpy(w).to(torch.float32))
    assert out.dtype in (torch.int64, torch.float32, torch.float64)
    assert tuple(out.shape) == (M, N)
    assert torch.equal(out.to(torch.float64), torch.from_numpy(ref).to(torch.float64))


@pytest.mark.skipif(not intmodel.INT8_GEMM, reason="this torch has no CPU int8 GEMM")
@pytest.mark.parametrize("K", [1, 8, 256, 1024, 3000])
def test_int8_gemm_layer_equals_int64_reference(K):
    g = torch.Generator().manual_seed(K)
    w = torch.randint(-127, 128, (K, 40), generator=g, dtype=torch.int64)
    w[:, 0], w[: K // 2, 1] = 127, -127  # saturated columns
    x = torch.randint(-127, 128, (2, 3, K), generator=g, dtype=torch.int64)
    x[0, 0], x[0, 1] = 127, -127  # worst-case rows: |sum| = 127 * 127 * K
    layer = intmodel.IntLinear(w.float(), torch.ones(40, dtype=torch.int64), 1, w.to(torch.int8))
    out = layer(x.float())
    assert out.shape == (2, 3, 40)
    assert torch.equal(out.to(torch.int64), x @ w)
    assert torch.equal(out.to(torch.int64), intmodel.int_matmul(x.float(), w.float()).long())


def test_tables_equal_with_and_without_the_int8_gemm():
    int_model = saturate(random_int_model(21, 1.0), "random")
    T = WINDOW_BYTES + 4 * P
    lanes = torch.cat([worst_case_lanes(T), torch.randint(0, 256, (5, T))])
    tables = []
    for int8 in (True, False):
        c = clone(int_model)
        for block in c.global_blocks + c.local_blocks:
            for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
                lin.w8 = lin.w.to(torch.int8) if int8 else None
        c.head.w8 = c.head.w.to(torch.int8) if int8 else None
        tables.append((full_tables(c, lanes, 64), c.counts_incremental(lanes[:, : 8 * P])))
    assert torch.equal(tables[0][0], tables[1][0])
    assert torch.equal(tables[0][1], tables[1][1])


@pytest.mark.parametrize(
    "T, S, lo, window", [(1, 1, 0, 0), (1, 9, 3, 0), (1, 40, 7, 16), (5, 33, 2, 8)]
)
def test_fused_attention_equals_the_reference(T, S, lo, window):
    g = torch.Generator().manual_seed(T * 1000 + S)
    B, H, hd = 3, 2, 16
    q = torch.randint(-128, 128, (B, H, T, hd), generator=g).float()
    k = torch.randint(-128, 128, (B, H, lo + S + 5, hd), generator=g).float()
    v = torch.randint(-128, 128, (B, H, lo + S + 5, hd), generator=g).float()
    q[0], k[0], v[0] = 127, 127, -128  # saturated lane: scores and sums at their largest
    alibi = torch.randint(0, 40, (H, 50), generator=g)
    exp = torch.tensor([round(2**15 * math.exp(-i / 32)) for i in range(700)] + [0])
    out_mult = torch.randint(1, 2**12, (H * hd,), generator=g)
    args = (q, k, v, lo, lo + S, 1500, 14, alibi, window, exp, out_mult, 18)
    ref = TorchKernels.attend(*args)
    fused = NumbaKernels.attend(*args)  # int8 operands and result
    assert fused.dtype == torch.int8
    assert torch.equal(fused.to(ref.dtype), ref)
    assert ref.abs().max() <= 127


def test_int_matmul_worst_case_sums_past_2_to_the_24():
    for K in (1024, 1025, 1500, 2048, 4096):
        x = torch.full((3, K), 127, dtype=torch.int64)
        w = torch.full((K, 2), 127.0)
        w[:, 1] = -127.0
        out = int_matmul(x, w).to(torch.float64)
        assert out[0, 0].item() == 127 * 127 * K
        assert out[0, 1].item() == -127 * 127 * K


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(0, 2**62 - 1),
            st.integers(0, 2**31 - 1).map(lambda s: s * s),
            st.integers(1, 2**31 - 1).map(lambda s: s * s - 1),
            st.integers(0, 2**31 - 2).map(lambda s: s * s + 1),
            st.integers(0, 1000),
        ),
        min_size=1,
        max_size=64,
    )
)
def test_isqrt_is_exact(values):
    got = isqrt(torch.tensor(values, dtype=torch.int64))
    assert got.dtype == torch.int64
    assert got.tolist() == [math.isqrt(v) for v in values]


def test_isqrt_edges():
    edges = [0, 1, 2, 3, 4, 2**52, 2**52 + 1, 2**53 - 1, 2**53, 2**53 + 1, 2**62 - 1]
    for s in (2**26 - 1, 2**26, 2**31 - 1, 3037000499, 94906265, 94906267):
        edges += [s * s - 1, s * s, s * s + 1] if s * s + 1 < 2**62 else [s * s - 1]
    edges = [v for v in edges if 0 <= v < 2**62]
    got = isqrt(torch.tensor(edges, dtype=torch.int64)).tolist()
    assert got == [math.isqrt(v) for v in edges]


# ----------------------------------------------------------------------------- devices


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_tables_equal_cpu_tables():
    T = WINDOW_BYTES + 8 * P
    lanes = torch.cat([worst_case_lanes(T), torch.randint(0, 256, (25, T))])
    for int_model in (random_int_model(3, 1.0), saturate(random_int_model(5, 1.0), "random")):
        cpu = full_tables(clone(int_model), lanes, 64)
        gpu_model = clone(int_model).to("cuda")
        assert torch.equal(full_tables(gpu_model, lanes, 64), cpu)
        assert torch.equal(full_tables(gpu_model, lanes, 3), cpu)
        assert torch.equal(gpu_model.counts_incremental(lanes[:, : 8 * P]).cpu(), cpu[:, : 8 * P])


# ---------------------------------------------------------------- integer vs float bits


def test_integer_model_bits_within_3_percent_of_float():
    model, int_model = trained_pair()
    for seed, n in ((2, 1500), (3, 517)):  # lengths past the window, one not a patch multiple
        sample = word_text(seed, n)
        fb, ib = float_bits(model, sample), int_bits(int_model, sample)
        assert fb / n < 3.0, f"the float model did not learn: {fb / n:.3f} bits/byte"
        assert abs(ib - fb) <= 0.03 * fb, f"int {ib / n:.4f} vs float {fb / n:.4f} bits/byte"
