"""The float MEGABYTE: causality, every byte predicted, learning, streaming."""

import math

import pytest
import torch
from helpers import fit_briefly

from megazip.model import PRESETS, Megabyte, MegabyteConfig

CFG = PRESETS["test"]  # P = 4, window 16 patches


def random_model(cfg=CFG, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = Megabyte(cfg).to(dtype).eval()
    with torch.no_grad():  # larger weights than the init, so that every path matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return m


@pytest.mark.parametrize("i", [0, 1, 3, 4, 5, 7, 8, 31, 32, 47, 63])
def test_changing_byte_i_never_changes_predictions_at_or_before_i(i):
    m = random_model()
    T = 64
    x = torch.randint(0, 256, (1, T))
    y = x.clone()
    y[0, i] = (x[0, i] + 1 + torch.randint(0, 254, ())) % 256
    with torch.no_grad():
        a, b = m(x)[0], m(y)[0]
    assert torch.equal(a[0, : i + 1], b[0, : i + 1]), "prediction at <= i saw byte i"
    if i + 1 < T:
        assert not torch.allclose(a[0, i + 1 :], b[0, i + 1 :]), "later bytes ignore byte i"


def test_first_byte_and_zero_bytes_take_part_in_the_loss():
    m = random_model(dtype=torch.float32)
    x = torch.randint(1, 256, (2, 32))
    x[:, 0] = 0  # a 0x00 as the very first byte
    x[:, 9] = 0
    logits, loss = m(x, x)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), x.reshape(-1))
    assert torch.allclose(loss, expected)
    loss.backward()
    # the loss depends on the logits of position 0 and of the zero byte at position 9
    m.zero_grad()
    logits, loss = m(x, x)
    logits.retain_grad()
    loss.backward()
    g = logits.grad
    assert g[:, 0].abs().sum() > 0
    assert g[:, 9].abs().sum() > 0
    assert g[0, 0, 0] < 0  # pushes up p(0x00) at the first position
    assert g[0, 9, 0] < 0


def test_fresh_model_scores_about_8_bits_per_byte_on_random_bytes():
    torch.manual_seed(1)
    m = Megabyte(PRESETS["tiny"]).eval()
    x = torch.randint(0, 256, (4, 1024))
    with torch.no_grad():
        _, loss = m(x, x)
    assert abs(loss.item() / math.log(2) - 8.0) < 0.1


def test_a_few_hundred_steps_learn_a_repetitive_text():
    torch.manual_seed(0)
    m = Megabyte(CFG)
    text = b"the quick brown fox jumps over the lazy dog. " * 40
    data = torch.tensor(list(text))
    fit_briefly(m, data, 300)
    with torch.no_grad():
        x = data[:256].view(4, 64)
        _, loss = m(x, x)
    assert loss.item() / math.log(2) < 2.0


def test_streaming_equals_forward_within_the_window_and_chunking_does_not_matter():
    m = random_model()
    x = torch.randint(0, 256, (2, CFG.window * CFG.patch_size))
    with torch.no_grad():
        full = m(x)[0]
        for chunk in (1, 3, 16):
            assert torch.allclose(m.stream_logits(x, chunk_patches=chunk), full, atol=1e-10)


def test_streaming_past_the_window_depends_only_on_recent_context():
    # with one global layer, a patch sees exactly the W patches before it
    cfg = MegabyteConfig(
        patch_size=4,
        global_dim=16,
        global_layers=1,
        global_heads=2,
        local_dim=16,
        local_layers=1,
        local_heads=2,
        window=4,
        mlp_ratio=2,
    )
    m = random_model(cfg)
    x = torch.randint(0, 256, (1, 64))
    y = x.clone()
    y[0, :8] = (y[0, :8] + 7) % 256  # change patches 0 and 1
    with torch.no_grad():
        a, b = m.stream_logits(x, chunk_patches=2), m.stream_logits(y, chunk_patches=2)
    # patch k's global input holds patches k-4..k-1: from patch 6 on, 0 and 1 are gone
    assert torch.allclose(a[0, 24:], b[0, 24:], atol=1e-12)
    assert not torch.allclose(a[0, 8:20], b[0, 8:20])
