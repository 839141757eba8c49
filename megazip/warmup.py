"""Compile and cache the numba kernels once, so that the first real run starts fast.

    python -m megazip.warmup

numba compiles the integer model's kernels and the adaptive stage on first use (about a
minute on a 2-core CPU) and caches the machine code next to the sources; `make` runs this
after installing. It compresses and decompresses a prefix of the shipped sample, which
the default model codes (so both the encoder's and the decoder's kernels are compiled).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "sotu-1819-monroe.txt"
FALLBACK = b"The integer model and the adaptive stage, compiled once and cached. " * 40


def main() -> int:
    from megazip import container

    data = SAMPLE.read_bytes()[:3000] if SAMPLE.is_file() else FALLBACK
    t = time.perf_counter()
    blob = container.compress(data, threads=1)
    methods = {s.method for s in container.scan(blob).segments}
    if container.decompress(blob, threads=1) != data:
        print("megazip warmup: round trip FAILED", file=sys.stderr)
        return 1
    coded = "model" if container.MODEL in methods else "no model segment"
    print(f"megazip warmup: kernels ready ({coded}, {time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
