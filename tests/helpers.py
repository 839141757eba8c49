"""Shared test helpers: word salad, worst-case lanes, and small integer models.

Models: random_int_model is the integer model of a randomly perturbed test-preset float
model (it codes nothing well); trained_pair is a test-preset model trained a few seconds
on word_text and its integer model (it wins text). Both are cached and return fresh
objects, so a test may change what it gets.
"""

from __future__ import annotations

import functools
import random

import torch

from megazip.export import export
from megazip.intmodel import IntMegabyte
from megazip.model import PRESETS, Megabyte

CFG = PRESETS["test"]  # P = 4, window 16 patches (64 bytes)
P = CFG.patch_size

WORDS = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as"]
WORDS += ["with", "was", "on", "be", "by", "this", "are", "from", "at", "or"]


def word_text(seed: int, n: int) -> bytes:
    """n bytes of word salad from a 20-word vocabulary: a model learns it in a few
    seconds, while it has few long repeats for zstd to exploit."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < n:
        w = rng.choice(WORDS) + rng.choice([" ", " ", " ", ", ", ". "])
        out.append(w)
        size += len(w)
    return "".join(out).encode()[:n]


def special_lane(kind: str, n: int, seed: int = 0) -> list[int]:
    """n bytes of one of the worst-case patterns KINDS."""
    if kind == "zeros":
        return [0] * n
    if kind == "ff":
        return [255] * n
    if kind == "alt00ff":
        return [0, 255] * (n // 2) + [0] * (n % 2)
    if kind == "alt55aa":
        return [0x55, 0xAA] * (n // 2) + [0x55] * (n % 2)
    if kind == "ramp":
        return [i % 256 for i in range(n)]
    if kind == "text":
        return list(word_text(seed, n))
    raise ValueError(kind)


KINDS = ["zeros", "ff", "alt00ff", "alt55aa", "ramp", "text"]


def perturbed_model(seed: int, scale: float) -> Megabyte:
    """A float test-preset model with strongly perturbed weights (every path matters)."""
    torch.manual_seed(seed)
    m = Megabyte(CFG).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * scale)
    return m


@functools.lru_cache(maxsize=32)
def _random_int_model(seed: int, scale: float) -> IntMegabyte:
    g = torch.Generator().manual_seed(seed + 1)
    calibration = torch.randint(0, 256, (4, 16 * P), generator=g)
    return export(perturbed_model(seed, scale), calibration)


def clone(int_model: IntMegabyte) -> IntMegabyte:
    """A fresh IntMegabyte on the CPU with the same integers."""
    return IntMegabyte(int_model.config, dict(int_model.tensors), dict(int_model.ints))


def random_int_model(seed: int = 0, scale: float = 0.2) -> IntMegabyte:
    """The integer model of a randomly perturbed float model (cached; a fresh object)."""
    return clone(_random_int_model(seed, scale))


def fit_briefly(model: Megabyte, data: torch.Tensor, steps: int) -> Megabyte:
    """Train `model` for `steps` AdamW steps (lr 3e-3) on batches of 8 random 64-byte
    windows of `data` (1-D int64), drawing from torch's global RNG; returns it in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 64, (8,))
        x = torch.stack([data[s : s + 64] for s in starts])
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@functools.lru_cache(maxsize=2)
def _trained_pair(seed: int = 0, steps: int = 150):
    """A test-preset float model trained briefly on word_text, and its integer model."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        data = torch.tensor(list(word_text(1000 + seed, 20000)))
        m = Megabyte(CFG)
        fit_briefly(m, data, steps)
        calibration = torch.stack([data[s : s + 64] for s in range(0, 64 * 16, 64)])
        return m, export(m, calibration)
    finally:
        torch.set_num_threads(before)


def trained_pair(seed: int = 0):
    """(float model, integer model) trained on word salad (cached; a fresh int model)."""
    m, int_model = _trained_pair(seed)
    return m, clone(int_model)
