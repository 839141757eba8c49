"""`make demo`: compress, decompress and verify a sample with the default model, and put
its bits per byte next to zstd -19 and xz -9e.

    python -m megazip.demo [FILE]
"""

from __future__ import annotations

import lzma
import sys
import time
from pathlib import Path

import zstandard

import megazip
from megazip import checkpoint

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "sotu-1819-monroe.txt"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else SAMPLE
    data = path.read_bytes()
    model = checkpoint.DEFAULT_MODEL
    print(f"megazip demo: {path.name}, {len(data):,} bytes, model {model!r}")
    t = time.perf_counter()
    blob = megazip.compress(data, model)
    t_c = time.perf_counter() - t
    t = time.perf_counter()
    back = megazip.decompress(blob)
    t_d = time.perf_counter() - t
    if back != data:
        print("FAILED: the round trip did not reproduce the input", file=sys.stderr)
        return 1
    rows = [
        (
            "megazip",
            len(blob),
            f"{len(data) / t_c / 1e3:.1f} KB/s",
            f"{len(data) / t_d / 1e3:.1f} KB/s",
        ),
        ("zstd -19", len(zstandard.ZstdCompressor(level=19).compress(data)), "", ""),
        ("xz -9e", len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)), "", ""),
    ]
    print(f"round trip verified: {len(back):,} bytes identical\n")
    print(f"{'codec':<10} {'bytes':>9} {'bits/byte':>10} {'compress':>12} {'decompress':>12}")
    for name, size, c, d in rows:
        print(f"{name:<10} {size:>9,} {8 * size / len(data):>10.3f} {c:>12} {d:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
