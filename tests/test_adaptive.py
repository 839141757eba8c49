"""The adaptive stage: exact encoder/decoder symmetry, and gains on known structure."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from megazip import adaptive
from megazip.intmodel import COUNT_TOTAL


def uniform_counts(shape):
    return np.full((*shape, 256), COUNT_TOTAL // 256, np.int64)


def random_counts(rng, shape):
    """Valid count tables (each >= 1, rows summing to COUNT_TOTAL) with skewed mass."""
    w = rng.exponential(size=(*shape, 256)) ** 3
    c = 1 + np.floor(w / w.sum(-1, keepdims=True) * (COUNT_TOTAL - 256)).astype(np.int64)
    c[..., 0] += COUNT_TOTAL - c.sum(-1)
    return c


def bits(counts, symbols, active):
    c = np.take_along_axis(counts, symbols[..., None].astype(np.int64), -1)[..., 0]
    return float(((24 - np.log2(c)) * active).sum())


def encoder_tables(counts, symbols, active):
    B, T = symbols.shape
    return adaptive.mix_chunk(adaptive.LaneModels(B, T), counts, symbols, active)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    T=st.integers(1, 300),
    B=st.integers(1, 5),
    alphabet=st.integers(2, 256),
    chunk=st.integers(1, 64),
)
def test_decoder_side_tables_and_state_equal_the_encoders_after_every_byte(
    seed, T, B, alphabet, chunk
):
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, alphabet, (B, T)).astype(np.int64)
    symbols[:, T // 2 :] = symbols[:, : T - T // 2]  # repeats, so matches happen
    lengths = rng.integers(1, T + 1, B)
    active = np.arange(T)[None, :] < lengths[:, None]
    counts = random_counts(rng, (B, T))
    enc = adaptive.LaneModels(B, T)
    dec = adaptive.LaneModels(B, T)
    for s in range(0, T, chunk):  # the encoder, chunk by chunk
        e = slice(s, s + chunk)
        want = adaptive.mix_chunk(enc, counts[:, e], symbols[:, e], active[:, e])
        for t in range(s, min(s + chunk, T)):  # the decoder, byte by byte
            got = adaptive.mix(dec, counts[:, t], active[:, t])
            assert np.array_equal(got[active[:, t]], want[:, t - s][active[:, t]])
            assert (got[active[:, t]] >= 1).all()
            assert (got[active[:, t]].sum(-1) == COUNT_TOTAL).all()
            adaptive.update(dec, symbols[:, t].astype(np.uint8), active[:, t])
        for a, b in zip(enc.arrays(), dec.arrays(), strict=True):
            assert np.array_equal(a, b)


def test_second_copy_of_a_random_block_costs_under_005_bits_per_byte():
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, 65536)
    symbols = np.concatenate([block, block])[None]
    active = np.ones_like(symbols, bool)
    counts = uniform_counts(symbols.shape)
    final = encoder_tables(counts, symbols, active)
    second = bits(final[:, 65536:], symbols[:, 65536:], active[:, 65536:]) / 65536
    first = bits(final[:, :65536], symbols[:, :65536], active[:, :65536]) / 65536
    assert second < 0.05
    assert first < 8.0 * 1.005  # no repeats in the first copy: about the prior's 8 bits


def test_fixed_width_records_gain():
    rng = np.random.default_rng(1)
    fields = [bytes(rng.integers(65, 91, 6)) for _ in range(40)]
    recs = b"".join(b"%05d|" % i + fields[i % 40] + b"|2024-01-01|OK\n" for i in range(3000))
    symbols = np.frombuffer(recs, np.uint8).astype(np.int64)[None]
    active = np.ones_like(symbols, bool)
    counts = uniform_counts(symbols.shape)
    final = encoder_tables(counts, symbols, active)
    assert bits(final, symbols, active) < 0.5 * bits(counts, symbols, active)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_never_more_than_half_a_percent_worse_than_the_prior(seed):
    rng = np.random.default_rng(seed)
    T = 20000
    symbols = rng.integers(0, 4, (1, T))  # low-entropy noise: many false short matches
    counts = np.full((1, T, 256), 1, np.int64)
    counts[..., :4] = (COUNT_TOTAL - 252) // 4
    counts[..., 0] += COUNT_TOTAL - counts.sum(-1)
    active = np.ones_like(symbols, bool)
    final = encoder_tables(counts, symbols, active)
    assert bits(final, symbols, active) <= 1.005 * bits(counts, symbols, active)
