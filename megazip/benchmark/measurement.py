"""Measuring one codec on one input (a result row), and a codec's rows over several
files combined (the total).

A row: compressed `bytes`, `bits_per_byte`, `ratio` (original / compressed), compression
and decompression speed in MB/s (1 MB = 10^6 bytes of *original* data per second, median
over the runs), their median `*_seconds`, `peak_memory_bytes` (see memory.py; the larger
of compression and decompression), `runs`, and `verified`: every run's output is
decompressed and compared with the input, and a mismatch raises RuntimeError.

Runs: with `repeat=None`, a codec runs `codec.runs` times (classical codecs up to 3, fewer
once the codec has spent RUN_BUDGET_S on the file; megazip once, after the untimed warm-up
that loaded its model); `repeat=N` runs every codec, megazip included, exactly N times.
External tools (zpaq, 7-Zip) are timed end to end: writing the input file, the tool's
process, reading back.
"""

from __future__ import annotations

import statistics

import torch

from .codecs import Codec
from .memory import timed

MB = 1e6  # bytes in a megabyte, for speeds and memory
RUN_BUDGET_S = 1.0  # with repeat=None, no further runs once a codec has spent this long


def _rates(n: int, compressed: int, c_s: float, d_s: float) -> dict:
    """The derived columns of a row: bits/byte, ratio, MB/s (None for empty input)."""
    return {
        "bits_per_byte": 8 * compressed / n if n else None,
        "ratio": n / compressed if n and compressed else None,
        "compress_MBps": n / MB / max(c_s, 1e-9) if n else None,
        "decompress_MBps": n / MB / max(d_s, 1e-9) if n else None,
    }


def measure(codec: Codec, data: bytes, repeat: int | None = None, cuda: bool = False) -> dict:
    """One codec on one input: a result row (plus the codec's extra fields, and
    `peak_gpu_memory_bytes` when it has extras: torch's allocator peak above its level at
    the start if `cuda`, else None). RuntimeError if a round trip differs from `data`."""
    runs = repeat or codec.runs
    c_times, d_times, peaks, gpu_peaks = [], [], [], []
    spent = 0.0
    for _ in range(runs):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            gpu0 = torch.cuda.memory_allocated()
        blob, c_s, c_peak = timed(codec.compress, data)
        back, d_s, d_peak = timed(codec.decompress, blob)
        if back != data:
            raise RuntimeError(f"{codec.name}: round trip failed (decompressed bytes differ)")
        if cuda:
            gpu_peaks.append(torch.cuda.max_memory_allocated() - gpu0)
        c_times.append(c_s)
        d_times.append(d_s)
        peaks += [p for p in (c_peak, d_peak) if p is not None]
        spent += c_s + d_s
        if repeat is None and spent > RUN_BUDGET_S:
            break
    c_s, d_s = statistics.median(c_times), statistics.median(d_times)
    row = {
        "bytes": len(blob),
        **_rates(len(data), len(blob), c_s, d_s),
        "compress_seconds": c_s,
        "decompress_seconds": d_s,
        "peak_memory_bytes": max(peaks) if peaks else None,
        "runs": len(c_times),
        "verified": True,
    }
    if codec.extra:
        row |= codec.extra(data, blob)
        row["peak_gpu_memory_bytes"] = max(gpu_peaks) if gpu_peaks else None
    return row


def _sum(xs: list) -> float | None:
    """Sum, or None when any term is unknown."""
    return None if None in xs else sum(xs)


def total(rows: list[dict], n: int) -> dict:
    """Rows of one codec over files of `n` bytes in all, combined: sizes and (median)
    times add up, memory is the largest, speeds are total bytes over total time, runs the
    fewest; megazip's extra fields add up (None if unknown for any file)."""
    size = sum(r["bytes"] for r in rows)
    c_s = sum(r["compress_seconds"] for r in rows)
    d_s = sum(r["decompress_seconds"] for r in rows)
    peaks = [r["peak_memory_bytes"] for r in rows if r["peak_memory_bytes"] is not None]
    out = {
        "bytes": size,
        **_rates(n, size, c_s, d_s),
        "compress_seconds": c_s,
        "decompress_seconds": d_s,
        "peak_memory_bytes": max(peaks) if peaks else None,
        "runs": min(r["runs"] for r in rows),
        "verified": all(r["verified"] for r in rows),
    }
    if "model_bits" in rows[0]:
        segs: dict[str, int] = {}
        for r in rows:
            for m, k in r["segments"].items():
                segs[m] = segs.get(m, 0) + k
        gpu = [r["peak_gpu_memory_bytes"] for r in rows if r["peak_gpu_memory_bytes"] is not None]
        out |= {k: _sum([r[k] for r in rows]) for k in ("model_bits", "prior_bits")}
        out |= {
            "model_bytes": sum(r["model_bytes"] for r in rows),
            "header_bytes": sum(r["header_bytes"] for r in rows),
            "segments": dict(sorted(segs.items())),
            "ideal_bits": _sum([r["ideal_bits"] for r in rows]),
            "peak_gpu_memory_bytes": max(gpu) if gpu else None,
        }
    return out
