"""The codecs a benchmark can run, by name: classical codecs in this process (gzip,
bzip2, xz, zstd, brotli), external archivers (zpaq, 7-Zip) and megazip itself."""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .. import checkpoint, container
from ..evaluate import int_code_lengths
from .memory import run_tool

MAX_RUNS = 3  # default runs of a classical codec on one file (see measurement.measure)
WARMUP_BYTES = 1024  # megazip warm-up input: the first bytes of the first file

CODEC_NAMES = [
    "gzip-9",
    "bzip2-9",
    "xz-9e",
    "zstd-3",
    "zstd-19",
    "zstd-22-long",
    "brotli-11",
    "zpaq-m5",
    "7z-ppmd",
    "megazip",
]


@dataclass
class Codec:
    """A named codec: compress/decompress bytes -> bytes, and what it stands for."""

    name: str
    description: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]
    runs: int = MAX_RUNS  # default number of runs (repeat=None)
    extra: Callable[[bytes, bytes], dict] | None = None  # extra row fields (data, blob)


def _zstd(level: int, long: bool = False) -> tuple[Callable, Callable]:
    """(compress, decompress) for zstd at `level`, with a checksum; `long`: long-distance
    matching with a 2^27-byte window."""
    if long:
        params = zstandard.ZstdCompressionParameters.from_level(
            level, enable_ldm=True, window_log=27, write_checksum=True
        )
        cctx = zstandard.ZstdCompressor(compression_params=params)
    else:
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
    return cctx.compress, dctx.decompress


def _archiver(add: Callable[[str], list[str]], extract: Callable[[str], list[str]], suffix: str):
    """(compress, decompress) through an archiver: the input is written to a temporary
    folder as a file named `data`; the compressed bytes are the whole archive."""

    def compress(data: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="megazip-bench-") as d:
            Path(d, "data").write_bytes(data)
            run_tool(add("archive" + suffix), d)
            return Path(d, "archive" + suffix).read_bytes()

    def decompress(blob: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="megazip-bench-") as d:
            Path(d, "archive" + suffix).write_bytes(blob)
            run_tool(extract("archive" + suffix), d)
            return Path(d, "out", "data").read_bytes()

    return compress, decompress


def classical() -> dict[str, Codec | str]:
    """Every codec but megazip, by name: a Codec, or why it is unavailable here."""
    out: dict[str, Codec | str] = {
        "gzip-9": Codec(
            "gzip-9",
            "gzip -9: Python gzip module, zlib level 9 (no file name in the header)",
            lambda d: gzip.compress(d, compresslevel=9, mtime=0),
            gzip.decompress,
        ),
        "bzip2-9": Codec(
            "bzip2-9",
            "bzip2 -9: Python bz2 module, level 9",
            lambda d: bz2.compress(d, 9),
            bz2.decompress,
        ),
        "xz-9e": Codec(
            "xz-9e",
            "xz -9e: Python lzma module, .xz format, preset 9 | PRESET_EXTREME",
            lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME),
            lzma.decompress,
        ),
        "zstd-3": Codec("zstd-3", "zstd -3: python-zstandard, level 3, checksum", *_zstd(3)),
        "zstd-19": Codec("zstd-19", "zstd -19: python-zstandard, level 19, checksum", *_zstd(19)),
        "zstd-22-long": Codec(
            "zstd-22-long",
            "zstd --ultra -22 --long: python-zstandard, level 22, long-distance matching, "
            "window log 27, checksum",
            *_zstd(22, long=True),
        ),
    }
    try:
        import brotli

        out["brotli-11"] = Codec(
            "brotli-11",
            "brotli -q 11: Python brotli module, quality 11, window 22",
            lambda d: brotli.compress(d, quality=11),
            brotli.decompress,
        )
    except ImportError:
        out["brotli-11"] = "the Python module brotli is not installed"
    if zpaq := shutil.which("zpaq"):
        out["zpaq-m5"] = Codec(
            "zpaq-m5",
            f"zpaq -m5 ({zpaq}): size of an archive holding one file named 'data'",
            *_archiver(
                lambda a: [zpaq, "a", a, "data", "-m5"],
                lambda a: [zpaq, "x", a, "-to", "out"],
                ".zpaq",
            ),
        )
    else:
        out["zpaq-m5"] = "zpaq is not on PATH"
    if sz := shutil.which("7zz") or shutil.which("7z"):
        out["7z-ppmd"] = Codec(
            "7z-ppmd",
            f"7-Zip PPMd ({sz} -m0=PPMd -mx=9 -mo=32 -mmem=192m): size of a .7z archive "
            "holding one file named 'data'",
            *_archiver(
                lambda a: [sz, "a", "-t7z", "-m0=PPMd", "-mx=9", "-mo=32", "-mmem=192m", a, "data"],
                lambda a: [sz, "x", a, "-oout", "-y"],
                ".7z",
            ),
        )
    else:
        out["7z-ppmd"] = "neither 7zz nor 7z is on PATH"
    return out


def parse_codecs(spec: str | None) -> tuple[list[str], dict[str, str]]:
    """(codecs to run, {unavailable codec: reason}) for a comma-separated list of names
    (None: every known codec). Raises ValueError for an unknown name."""
    names = CODEC_NAMES if spec is None else [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in CODEC_NAMES:
            raise ValueError(f"unknown codec {n!r} (known: {','.join(CODEC_NAMES)})")
    if not names:
        raise ValueError("no codecs given")
    known = classical()
    unavailable = {n: known[n] for n in names if isinstance(known.get(n), str)}
    return [n for n in dict.fromkeys(names) if n not in unavailable], unavailable


def _finite(x: float | None) -> float | None:
    """x, or None when it is unknown or not finite (JSON has no NaN or infinity)."""
    return x if x is not None and math.isfinite(x) else None


def megazip_codec(model: str, device: str, ideal: bool, first: bytes) -> tuple[Codec, dict]:
    """(the megazip codec, the model's identity {name, source, hash}). The codec writes
    what `megazip compress` writes (container defaults); its rows get megazip's extra
    fields, with `ideal_bits` (the whole file as one lane, scored by the integer model
    alone) when `ideal`, else None. Warms up on `first` (untimed): loads the model,
    compiles."""
    stats: dict = {}

    def compress(data: bytes) -> bytes:
        stats.clear()
        return container.compress(data, model, device=device, stats=stats)

    def decompress(blob: bytes) -> bytes:
        return container.decompress(blob, model, device=device)

    int_model = checkpoint.load_int_model(model).to(device) if ideal else None

    def extra(data: bytes, blob: bytes) -> dict:
        methods = stats["methods"]
        return {
            "model_bits": _finite(stats.get("model_bits")),
            "prior_bits": _finite(stats.get("prior_bits")),
            "model_bytes": stats["model_bytes"],
            "header_bytes": stats["header_bytes"],
            "segments": {m: methods.count(m) for m in sorted(set(methods))},
            "ideal_bits": int_code_lengths(int_model, data)[0] if int_model is not None else None,
        }

    sample = first[:WARMUP_BYTES] or b"megazip warm-up"
    blob = compress(sample)
    if decompress(blob) != sample:
        raise RuntimeError("megazip round trip failed on the warm-up input")
    name, content_hash = container.model_identity(model, device)
    codec = Codec(
        "megazip",
        f"megazip: model {name}, default layout, one thread, device {device}",
        compress,
        decompress,
        runs=1,
        extra=extra,
    )
    return codec, {"name": name, "source": str(model), "hash": content_hash}
