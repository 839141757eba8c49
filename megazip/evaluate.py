"""Density evaluation: bits per byte of a model on files, teacher-forced.

Each file is scored as one stream from its first byte: the global model is run in chunks
with its key/value cache, so every byte sees the model's full context (the W patches
before it), exactly as the coder does. A file whose length is not a multiple of P is
padded with zeros; padding bytes are not scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import list_files
from .model import Megabyte

LN2 = math.log(2)


@dataclass
class FileScore:
    path: str
    bytes: int
    bits: float  # ideal code length: sum of -log2 p(byte)

    @property
    def bits_per_byte(self) -> float:
        return self.bits / self.bytes if self.bytes else 0.0


def pad_to_patches(data: bytes, patch_size: int) -> torch.Tensor:
    """(1, T) int64 tensor of `data`, zero-padded to a multiple of patch_size."""
    n = len(data)
    t = torch.zeros(1, -(-max(n, 1) // patch_size) * patch_size, dtype=torch.long)
    t[0, :n] = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    return t


@torch.no_grad()
def float_bits(model: Megabyte, data: bytes, device="cpu") -> float:
    """Ideal code length of `data` in bits under the float model (sum of -log2 p)."""
    if not data:
        return 0.0
    x = pad_to_patches(data, model.config.patch_size).to(device)
    logits = model.stream_logits(x)[0, : len(data)].float()
    return F.cross_entropy(logits, x[0, : len(data)], reduction="sum").item() / LN2


def evaluate(
    model: Megabyte | Callable[[bytes], float],
    paths,
    device="cpu",
    on_file: Callable[[FileScore], None] | None = None,
) -> tuple[list[FileScore], FileScore]:
    """Score every file under `paths`. `model` is a float Megabyte or any function
    bytes -> bits. Returns (per-file scores, total), the total bytes-weighted."""
    if isinstance(model, Megabyte):
        float_model = model.to(device).eval()

        def bits_of(data):
            return float_bits(float_model, data, device)
    else:
        bits_of = model
    scores = []
    for f in list_files(paths):
        data = Path(f).read_bytes()
        s = FileScore(str(f), len(data), bits_of(data))
        scores.append(s)
        if on_file:
            on_file(s)
    total = FileScore("total", sum(s.bytes for s in scores), sum(s.bits for s in scores))
    return scores, total


def int_code_lengths(int_model, data: bytes) -> tuple[float, float]:
    """(bits under the integer model alone, bits after the adaptive stage) for `data` as
    one segment: exactly the encoder's code length (container.compress's model_bits and
    prior_bits) for `data` coded as one segment (segment size >= len(data)), the block's
    record length included (megazip.coder.code_lengths)."""
    from .coder import code_lengths

    if not data:
        return 0.0, 0.0
    prior, final = code_lengths(int_model, [bytes(data)])
    return prior[0], final[0]


def int_bits(int_model, data: bytes, adaptive: bool = False) -> float:
    """Ideal code length of `data` in bits under the integer coding model (one segment),
    after the adaptive stage if `adaptive` (see int_code_lengths)."""
    return int_code_lengths(int_model, data)[1 if adaptive else 0]
