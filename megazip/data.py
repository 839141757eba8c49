"""Bytes from files and folders, and random training windows over them.

Files are read whole and concatenated into one uint8 buffer per split; a training window is
any `seq_len` consecutive bytes of it (windows may straddle two files, as text models
straddle documents). The held-out split is chosen *by file*, deterministically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch


def list_files(paths) -> list[Path]:
    """Regular files under `paths` (files, or folders walked recursively), sorted, no
    duplicates; hidden files and folders and __pycache__ folders skipped. Raises
    FileNotFoundError for a missing path."""
    out: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such file or directory: {p}")
        if p.is_file():
            out[p] = None
            continue
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(p).parts
            skip = any(s.startswith(".") or s == "__pycache__" for s in rel)
            if f.is_file() and not f.is_symlink() and not skip:
                out[f] = None
    return list(out)


def is_validation_file(path: Path, fraction: float) -> bool:
    """Deterministic by-file split: the file's name (not its location) decides."""
    h = int.from_bytes(hashlib.sha256(path.name.encode()).digest()[:8], "little")
    return h / 2**64 < fraction


def split_files(files: list[Path], fraction: float = 0.05) -> tuple[list[Path], list[Path]]:
    """(train, valid) lists. Files go to valid by a hash of their name; with 2 or more files
    at least one is held out and at least one is kept for training."""
    valid = [f for f in files if is_validation_file(f, fraction)]
    train = [f for f in files if f not in set(valid)]
    if len(files) >= 2 and not valid:
        train, valid = files[:-1], files[-1:]
    if not train:
        train, valid = valid[1:], valid[:1]
    return train, valid


def read_bytes(files: list[Path]) -> np.ndarray:
    """All files concatenated, as a uint8 array."""
    return np.frombuffer(b"".join(f.read_bytes() for f in files), dtype=np.uint8)


class ByteWindows:
    """Random windows of `seq_len` bytes from one buffer (shorter buffers are tiled)."""

    def __init__(self, data: np.ndarray, seq_len: int):
        if len(data) == 0:
            raise ValueError("no training bytes")
        if len(data) < seq_len + 1:
            data = np.tile(data, seq_len // len(data) + 2)
        self.data = torch.from_numpy(data.copy())
        self.seq_len = seq_len

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, seq_len) int64 windows at uniformly random offsets."""
        starts = torch.randint(0, len(self.data) - self.seq_len + 1, (batch,), generator=generator)
        idx = starts[:, None] + torch.arange(self.seq_len)
        return self.data[idx].long()

    def fixed(self, count: int, seed: int = 1234) -> torch.Tensor:
        """`count` windows chosen by a fixed seed: the same on every call and machine."""
        g = torch.Generator().manual_seed(seed)
        return self.sample(count, g)
