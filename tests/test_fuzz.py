"""Damaged .mgz files of every kind (bench/fuzz.py's containers and mutations, drawn by
hypothesis): decompressing one either gives the original bytes or raises FormatError /
ModelMismatch / ModelNotFound — never another exception, never other bytes."""

from __future__ import annotations

import importlib.util
import random
import time

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megazip import container

pytestmark = pytest.mark.usefixtures("one_thread")


def _fuzz():
    spec = importlib.util.spec_from_file_location("fuzz", ROOT / "bench" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fuzz = _fuzz()


@pytest.fixture(scope="module")
def made():
    model = fuzz.fuzz_model()
    return model, fuzz.kinds(model)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(fuzz.KIND_NAMES),
    how=st.sampled_from(fuzz.MUTATIONS),
    seed=st.integers(0, 2**32 - 1),
)
def test_damaged_files_are_refused_or_decode_to_the_original(made, kind, how, seed):
    model, kinds = made
    data, blob = kinds[kind]
    damaged = fuzz.mutate(blob, random.Random(seed), how) if blob else blob
    t = time.time()
    try:
        out = container.decompress(damaged, model)
    except fuzz.EXPECTED:
        return
    finally:
        assert time.time() - t < 30, "decoding a damaged file took too long"
    assert out == data, "a damaged file decoded to other bytes"
