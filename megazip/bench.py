"""Benchmark: megazip next to classical codecs, per file and for the whole set.

    report = run(["corpus/"], ["xz-9e", "zstd-19", "megazip"], model="tiny")
    print(to_markdown(report))

For every file and codec: compressed bytes, bits per byte, ratio (original / compressed),
compression and decompression speed in MB/s (1 MB = 10^6 bytes of *original* data per
second, median over the runs), and peak memory. Every run is verified: its output is
decompressed and compared with the input; a mismatch raises RuntimeError.

Runs: with `repeat=None`, classical codecs run up to 3 times (fewer once a codec has spent
1 s on a file) and megazip runs once (after an untimed warm-up that loads the model);
`repeat=N` runs every codec, megazip included, exactly N times. External tools (zpaq,
7-Zip) are timed end to end: writing the input file, the tool's process, reading back.

Peak memory (`peak_memory_bytes`, the larger of compression and decompression):
- codecs run inside this Python process (gzip, bzip2, xz, zstd, brotli, megazip): how far
  the process's peak resident set rose above its resident set at the start of the call
  (Linux VmHWM, reset through /proc/self/clear_refs just before the call). Memory that
  the allocator reuses without asking the kernel is not seen, so this is a lower bound.
- external tools (zpaq, 7-Zip): the tool process's own peak resident set (VmHWM), its
  executable and libraries included, sampled every 5 ms (a lower bound too).
- null where the platform offers neither. megazip on CUDA also reports
  `peak_gpu_memory_bytes` (torch's allocator peak above its level at the start).
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import io
import json
import lzma
import math
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import zstandard

from . import __version__, checkpoint, container
from .data import list_files

SCHEMA = 1
MAX_RUNS = 3  # default runs of a classical codec on one file
RUN_BUDGET_S = 1.0  # ... unless it has already spent this long on that file
WARMUP_BYTES = 1024  # megazip warm-up input: the first bytes of the first file
MB = 1e6
BPB_AXIS_MAX = 10.0  # the bar plot's bits/byte axis ends here; taller bars are clipped

# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else platform.processor())."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(device: str = "cpu") -> dict:
    """CPU model, cores, OS, Python and torch versions, and the device used."""
    d = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name()
    return d


def markdown(d: dict) -> str:
    """A machine description as one line."""
    return ", ".join(f"{k}: {v}" for k, v in d.items())


# ------------------------------------------------------------------------------ memory

_child_peak: int | None = None  # peak RSS of the last external tool run (bytes)


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes (Linux), else {}."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        k: int(v.split()[0]) * 1024
        for k, v in (ln.split(":", 1) for ln in lines if ":" in ln)
        if k in ("VmRSS", "VmHWM")
    }


def _reset_peak() -> int | None:
    """Reset this process's peak RSS to its current RSS; returns that RSS, or None when
    the kernel does not allow it (not Linux, or /proc/self/clear_refs not writable)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _status().get("VmRSS")


def _timed(fn: Callable[[bytes], bytes], arg: bytes) -> tuple[bytes, float, int | None]:
    """(fn(arg), seconds, peak memory in bytes or None), as described in the module doc."""
    global _child_peak
    _child_peak = None
    rss0 = _reset_peak()
    t = time.perf_counter()
    out = fn(arg)
    seconds = time.perf_counter() - t
    if _child_peak is not None:
        return out, seconds, _child_peak
    hwm = _status().get("VmHWM")
    return out, seconds, max(0, hwm - rss0) if rss0 is not None and hwm else None


def _tool(cmd: list[str], cwd: str) -> None:
    """Run an external tool quietly, recording its peak RSS: the VmHWM of its own process,
    sampled every 5 ms (getrusage would not do: after fork and exec it also counts the
    RSS of this process). RuntimeError if the tool fails; on Ctrl-C the tool is ended
    before the KeyboardInterrupt goes on."""
    global _child_peak
    status = None
    with subprocess.Popen(
        cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as p:
        try:
            while status is None:
                _child_peak = max(_child_peak or 0, _hwm(p.pid)) or None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    status = p.wait(timeout=0.005)
        except BaseException:
            p.kill()
            p.wait()
            raise
    if status != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit status {status}): {' '.join(cmd)}")


def _hwm(pid: int) -> int:
    """Peak RSS of a running process in bytes (Linux /proc), 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ------------------------------------------------------------------------------ codecs


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
    """compress/decompress through an archiver: the input is written to a temporary
    folder as a file named `data`; the compressed size is the archive's size."""

    def compress(data: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="megazip-bench-") as d:
            Path(d, "data").write_bytes(data)
            _tool(add("archive" + suffix), d)
            return Path(d, "archive" + suffix).read_bytes()

    def decompress(blob: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="megazip-bench-") as d:
            Path(d, "archive" + suffix).write_bytes(blob)
            _tool(extract("archive" + suffix), d)
            return Path(d, "out", "data").read_bytes()

    return compress, decompress


def _classical() -> dict[str, Codec | str]:
    """Every classical codec by name: a Codec, or why it is unavailable."""
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


def parse_codecs(spec: str | None) -> tuple[list[str], dict[str, str]]:
    """(codecs to run, {unavailable codec: reason}) for a comma-separated list of names
    (None: every known codec). Raises ValueError for an unknown name."""
    names = CODEC_NAMES if spec is None else [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        if n not in CODEC_NAMES:
            raise ValueError(f"unknown codec {n!r} (known: {','.join(CODEC_NAMES)})")
    if not names:
        raise ValueError("no codecs given")
    known = _classical()
    unavailable = {n: known[n] for n in names if isinstance(known.get(n), str)}
    return [n for n in dict.fromkeys(names) if n not in unavailable], unavailable


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _megazip(model: str, device: str, ideal: bool, first: bytes) -> tuple[Codec, dict]:
    """The megazip codec (container defaults, as `megazip compress` writes files) and
    the model's identity. Warms up on `first` (untimed): loads the model, compiles."""
    stats: dict = {}

    def compress(data: bytes) -> bytes:
        stats.clear()
        return container.compress(data, model, device=device, stats=stats)

    def decompress(blob: bytes) -> bytes:
        return container.decompress(blob, model, device=device)

    int_model = checkpoint.load_int_model(model).to(device) if ideal else None

    def extra(data: bytes, blob: bytes) -> dict:
        from .evaluate import int_bits

        methods = stats["methods"]
        return {
            "model_bits": _finite(stats.get("model_bits")),
            "prior_bits": _finite(stats.get("prior_bits")),
            "model_bytes": stats["model_bytes"],
            "header_bytes": stats["header_bytes"],
            "segments": {m: methods.count(m) for m in sorted(set(methods))},
            "ideal_bits": int_bits(int_model, data) if int_model is not None else None,
        }

    sample = first[:WARMUP_BYTES] or b"megazip warm-up"
    blob = compress(sample)
    if decompress(blob) != sample:
        raise RuntimeError("megazip round trip failed on the warm-up input")
    h = container.read_header(blob)
    codec = Codec(
        "megazip",
        f"megazip: model {h.model_name}, {container.DEFAULT_LANES} lanes, device {device}",
        compress,
        decompress,
        runs=1,
        extra=extra,
    )
    return codec, {"name": h.model_name, "source": str(model), "hash": h.model_hash.hex()}


# ----------------------------------------------------------------------------- measure


def _rates(n: int, compressed: int, c_s: float, d_s: float) -> dict:
    """The derived columns of a row: bits/byte, ratio, MB/s (None for empty input)."""
    return {
        "bits_per_byte": 8 * compressed / n if n else None,
        "ratio": n / compressed if n and compressed else None,
        "compress_MBps": n / MB / max(c_s, 1e-9) if n else None,
        "decompress_MBps": n / MB / max(d_s, 1e-9) if n else None,
    }


def measure(codec: Codec, data: bytes, repeat: int | None = None, cuda: bool = False) -> dict:
    """One codec on one input: a result row. Every run's output is decompressed and
    compared with `data`; RuntimeError if it differs."""
    runs = repeat or codec.runs
    c_times, d_times, peaks, gpu_peaks = [], [], [], []
    spent = 0.0
    for _ in range(runs):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            gpu0 = torch.cuda.memory_allocated()
        blob, c_s, c_peak = _timed(codec.compress, data)
        back, d_s, d_peak = _timed(codec.decompress, blob)
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


def _total(rows: list[dict], n: int) -> dict:
    """Rows of one codec over several files combined: sizes and times add up, memory is
    the largest, speeds are total bytes over total (median) time."""
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


@dataclass
class _Input:
    path: Path  # where it is read from
    name: str  # how it is reported: relative to the folder given, or the file's name


def inputs(paths) -> list[_Input]:
    """Files under `paths` (folders expanded with data.list_files), each once, named
    relative to the folder it was found in."""
    out: dict[Path, _Input] = {}
    for p in map(Path, paths):
        for f in list_files([p]):
            name = f.name if p.is_file() else f.relative_to(p).as_posix()
            out.setdefault(f.resolve(), _Input(f, name))
    return list(out.values())


def report_name(paths) -> str:
    """Name of the results files: the input folder's (or file's) name; 'bench' for
    several inputs."""
    if len(paths) == 1:
        return Path(paths[0]).resolve().name or "bench"
    return "bench"


@dataclass
class Report:
    """A benchmark in progress: filled by `run`, serialised by `to_dict`."""

    inputs: list[str]
    codecs: dict[str, str]  # name -> what was run
    unavailable: dict[str, str]
    machine: dict
    model: dict | None = None
    repeat: int | None = None
    files: list[dict] = field(default_factory=list)
    interrupted: bool = False

    def to_dict(self) -> dict:
        """The stable JSON schema (SCHEMA): per-file rows and totals over the files that
        every codec finished."""
        done = [f for f in self.files if len(f["codecs"]) == len(self.codecs)]
        n = sum(f["bytes"] for f in done)
        total = {c: _total([f["codecs"][c] for f in done], n) for c in self.codecs if done}
        return {
            "schema": SCHEMA,
            "megazip": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "inputs": self.inputs,
            "machine": self.machine,
            "model": self.model,
            "codecs": self.codecs,
            "unavailable": self.unavailable,
            "repeat": self.repeat,
            "interrupted": self.interrupted,
            "units": {
                "bytes": "compressed size in bytes",
                "bits_per_byte": "8 * compressed bytes / original bytes",
                "ratio": "original bytes / compressed bytes",
                "MBps": "original bytes per second / 10^6 (median of the runs)",
                "peak_memory_bytes": "see megazip/bench.py: in-process peak RSS growth, or "
                "an external tool's own peak RSS; the larger of compress and decompress",
                "model_bits": "megazip: ideal code length of the model-coded segments",
                "prior_bits": "megazip: the same under the model alone (no adaptive stage)",
                "model_bytes": "megazip: bytes the range coder wrote for them",
                "ideal_bits": "megazip --ideal: whole file scored by the integer model",
            },
            "files": self.files,
            "total": {"files": len(done), "bytes": n, "codecs": total},
        }


def run(
    paths,
    codecs: list[str],
    *,
    model: str = checkpoint.DEFAULT_MODEL,
    device: str = "cpu",
    repeat: int | None = None,
    ideal: bool = False,
    unavailable: dict[str, str] | None = None,
    on_start: Callable[[str, str], None] | None = None,
    on_result: Callable[[str, str, dict], None] | None = None,
) -> dict:
    """Benchmark `codecs` (names from CODEC_NAMES, available ones) on every file under
    `paths`; returns the report as a dict (Report.to_dict). `on_start(file, codec)` and
    `on_result(file, codec, row)` are called before and after each measurement. On
    KeyboardInterrupt the report of what was measured so far is returned, with
    "interrupted": true."""
    from .train import pick_device

    device = str(pick_device(device))
    files = inputs(paths)
    known = _classical()
    report = Report(
        inputs=[str(p) for p in paths],
        codecs={},
        unavailable=dict(unavailable or {}),
        machine=describe(device),
        repeat=repeat,
    )
    table: dict[str, Codec] = {}
    for name in codecs:
        if name == "megazip":
            first = files[0].path.read_bytes() if files else b""
            table[name], report.model = _megazip(model, device, ideal, first)
            report.model["device"] = device
        elif isinstance(known.get(name), Codec):
            table[name] = known[name]
        else:
            raise ValueError(f"codec {name} is not available: {known.get(name, 'unknown')}")
        report.codecs[name] = table[name].description
    cuda = device.startswith("cuda")
    try:
        for f in files:
            data = f.path.read_bytes()
            entry = {"path": f.name, "bytes": len(data), "codecs": {}}
            report.files.append(entry)
            for name, codec in table.items():
                if on_start:
                    on_start(f.name, name)
                row = measure(codec, data, repeat, cuda=cuda and name == "megazip")
                entry["codecs"][name] = row
                if on_result:
                    on_result(f.name, name, row)
    except KeyboardInterrupt:
        report.interrupted = True
    return report.to_dict()


# ----------------------------------------------------------------------------- outputs


def _int(x) -> str:
    return "—" if x is None else f"{x:,}"


def _bpb(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _speed(x) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _mem(x) -> str:
    return "—" if x is None else f"{x / MB:,.1f}"


def _notes(row: dict) -> str:
    """megazip's extra columns in words (empty for classical codecs)."""
    if "model_bytes" not in row:
        return ""
    s = "segments: " + ", ".join(f"{k} {m}" for m, k in row["segments"].items())
    if row["segments"].get("model"):
        ideal = [
            f"{label} {row[k] / 8:,.1f} B"
            for k, label in (("model_bits", "ideal"), ("prior_bits", "prior alone"))
            if row[k] is not None
        ]
        coded = f"coded {row['model_bytes']:,} B"
        s += "; model-coded: " + ", ".join([*ideal, coded])
    if row["ideal_bits"] is not None:
        s += f"; whole file, one lane: ideal {row['ideal_bits'] / 8:,.1f} B"
    return s


def _table(rows: dict[str, dict]) -> list[str]:
    out = [
        "| codec | bytes | bits/byte | ratio | compress MB/s | decompress MB/s "
        "| peak memory MB | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in rows.items():
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
        out.append(
            f"| {name} | {_int(r['bytes'])} | {_bpb(r['bits_per_byte'])} | {ratio} "
            f"| {_speed(r['compress_MBps'])} | {_speed(r['decompress_MBps'])} "
            f"| {_mem(r['peak_memory_bytes'])} | {_notes(r)} |"
        )
    return out


def to_markdown(doc: dict, title: str = "megazip bench") -> str:
    """The report as markdown: bits/byte of every file and codec, then a table per file
    and one for the total."""
    codecs = list(doc["codecs"])
    lines = [f"# {title}", ""]
    if doc["interrupted"]:
        lines += ["**Interrupted: partial results.**", ""]
    head = "| file | bytes | " + " | ".join(codecs) + " |"
    lines += ["## Bits per byte", "", head, "|---|---:|" + "---:|" * len(codecs)]
    for f in doc["files"]:
        cells = [_bpb(f["codecs"][c]["bits_per_byte"]) if c in f["codecs"] else "" for c in codecs]
        lines.append(f"| {f['path']} | {f['bytes']:,} | " + " | ".join(cells) + " |")
    t = doc["total"]
    if t["codecs"]:
        cells = [_bpb(t["codecs"][c]["bits_per_byte"]) for c in codecs]
        lines.append(
            f"| **all {t['files']} files** | **{t['bytes']:,}** | " + " | ".join(cells) + " |"
        )
    lines.append("")
    if t["codecs"]:
        lines += [f"## All {t['files']} files ({t['bytes']:,} bytes)", ""]
        lines += _table(t["codecs"]) + [""]
    for f in doc["files"]:
        lines += [f"## {f['path']} ({f['bytes']:,} bytes)", ""]
        lines += _table(f["codecs"]) + [""]
    lines += ["## Setup", ""]
    for name, what in doc["codecs"].items():
        lines.append(f"- **{name}**: {what}")
    for name, why in doc["unavailable"].items():
        lines.append(f"- {name}: not run ({why})")
    if doc["model"]:
        m = doc["model"]
        lines.append(f"- model: {m['name']} (sha256 {m['hash'][:16]}…), device {m['device']}")
    runs = doc["repeat"] and f"median of {doc['repeat']} runs"
    runs = runs or "median of up to 3 runs (1 for megazip)"
    lines += [
        f"- speeds: MB/s = 10^6 bytes of original data per second, {runs}; every run "
        "verified by decompressing and comparing",
        "- peak memory: growth of this process's peak resident set during the call "
        "(codecs run in-process), or the external tool's own peak resident set (zpaq, "
        "7-Zip); the larger of compression and decompression",
        f"- machine: {markdown(doc['machine'])}",
        f"- megazip {doc['megazip']}, {doc['created']}",
        "",
    ]
    return "\n".join(lines)


CSV_FIELDS = [
    "file",
    "file_bytes",
    "codec",
    "bytes",
    "bits_per_byte",
    "ratio",
    "compress_MBps",
    "decompress_MBps",
    "compress_seconds",
    "decompress_seconds",
    "peak_memory_bytes",
    "runs",
    "verified",
    "model_bits",
    "model_bytes",
    "ideal_bits",
]


def to_csv(doc: dict) -> str:
    """One line per file and codec, then one per codec for the total (file 'TOTAL')."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    entries = doc["files"] + [{"path": "TOTAL", **doc["total"]}]
    for f in entries:
        for name, r in f["codecs"].items():
            w.writerow({"file": f["path"], "file_bytes": f["bytes"], "codec": name, **r})
    return buf.getvalue()


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json}


def render(doc: dict, fmt: str, name: str = "megazip bench") -> str:
    """The report in format md, csv or json."""
    return to_markdown(doc, f"megazip bench: {name}") if fmt == "md" else FORMATS[fmt](doc)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save(doc: dict, out_dir, name: str, fmt: str) -> list[Path]:
    """Write DIR/NAME.FMT and DIR/NAME.json (always); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in dict.fromkeys([fmt, "json"]):
        text = render(doc, f, name)
        written.append(_write_atomic(out / f"{name}.{f}", lambda p, t=text: p.write_text(t)))
    return written


# ------------------------------------------------------------------------------- plots


def plot(doc: dict, out_dir, name: str) -> list[Path]:
    """DIR/NAME.png (bits/byte per file and codec, grouped bars) and DIR/NAME_speed.png
    (ratio against compression and decompression speed over all files, log speed
    axis). Needs matplotlib (ImportError otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    codecs = list(doc["codecs"])
    colors = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(codecs)}
    if "megazip" in colors:
        colors["megazip"] = "black"
    groups = [(f["path"], f["codecs"]) for f in doc["files"]]
    if doc["total"]["codecs"]:
        groups.append((f"all {doc['total']['files']} files", doc["total"]["codecs"]))

    width = 0.8 / max(1, len(codecs))
    inches = 1.5 + len(groups) * (0.3 + 0.09 * len(codecs))
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, inches)), 5.5))
    values = [r["bits_per_byte"] for _, rows in groups for r in rows.values()]
    top = min(max([v for v in values if v is not None], default=1.0) * 1.05, BPB_AXIS_MAX)
    shown: set[str] = set()  # codecs already in the legend
    for i, c in enumerate(codecs):
        for g, (_, rows) in enumerate(groups):
            v = rows[c]["bits_per_byte"] if c in rows else None
            if v is None:
                continue
            x = g - 0.4 + (i + 0.5) * width
            ax.bar(x, min(v, top), width, color=colors[c], label=None if c in shown else c)
            shown.add(c)
            if v > top:  # clipped (tiny inputs can cost many bits per byte): say how tall
                box = {"facecolor": "white", "edgecolor": "none", "pad": 1}
                ax.text(
                    x,
                    top * 0.98,
                    f"{v:.0f}",
                    rotation=90,
                    ha="center",
                    va="top",
                    fontsize=7,
                    bbox=box,
                )
    ax.set_ylim(0, top)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups], rotation=30, ha="right")
    if doc["total"]["codecs"] and len(groups) > 1:
        ax.axvline(len(groups) - 1.5, color="gray", lw=0.8, ls="--")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title(f"{name}: compressed size per file")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(
        ncol=min(len(codecs), 5), fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.08)
    )
    fig.tight_layout()
    bars = _write_atomic(out / f"{name}.png", lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)

    total = doc["total"]["codecs"] or (groups[-1][1] if groups else {})
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.8), sharey=True)
    panels = []
    for ax, key, label in zip(
        axes, ("compress_MBps", "decompress_MBps"), ("compression", "decompression"), strict=True
    ):
        points = [(c, r[key], r["ratio"]) for c, r in total.items() if r[key] and r["ratio"]]
        for c, x, y in points:
            ax.scatter(x, y, s=50, color=colors[c], zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} speed, MB/s (log scale)")
        ax.grid(alpha=0.3, which="both")
        if points:
            ax.set_xlim(min(p[1] for p in points) / 2, max(p[1] for p in points) * 8)
        panels.append((ax, points))
    axes[0].set_ylabel("ratio: original / compressed (higher is better)")
    fig.suptitle(f"{name}: ratio against speed, all files")
    fig.tight_layout()
    axes[0].set_ylim(axes[0].get_ylim())  # freeze the limits, then place the labels
    for ax, points in panels:
        _label_points(ax, points)
    speed = _write_atomic(
        out / f"{name}_speed.png", lambda p: fig.savefig(p, dpi=120, format="png")
    )
    plt.close(fig)
    return [bars, speed]


def _label_points(ax, points: list[tuple[str, float, float]]) -> None:
    """Label scatter points (name, x, y) beside them: right of the point if the label
    covers no other label or point and stays inside the axes, else left, else a line lower
    or higher (with a thin line back to the point). Call once the axes' limits are final."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = []
    for _, x, y in points:
        cx, cy = ax.transData.transform((x, y))
        taken.append(Bbox([[cx - 5, cy - 5], [cx + 5, cy + 5]]))
    steps = [0] + [s * k for k in range(1, 2 * len(points) + 1) for s in (-1, 1)]
    for name, x, y in sorted(points, key=lambda p: -p[2]):
        for step in steps:
            for dx, ha in ((8, "left"), (-8, "right")):
                kw = {"textcoords": "offset points", "xytext": (dx, 11 * step), "ha": ha}
                t = ax.annotate(name, (x, y), va="center", **kw)
                box = t.get_window_extent(renderer)
                t.remove()
                clear = not any(box.overlaps(b) for b in taken)
                if clear and inside.containsx(box.x0) and inside.containsx(box.x1):
                    break
            else:
                continue
            break
        line = {"arrowstyle": "-", "color": "gray", "lw": 0.5} if step else None
        ax.annotate(name, (x, y), va="center", arrowprops=line, **kw)
        taken.append(box)
