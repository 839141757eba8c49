"""Running a benchmark: every codec on every input file, collected into a Report whose
`to_dict` is the results' JSON schema (SCHEMA)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__, checkpoint
from ..data import list_files
from .codecs import Codec, classical, megazip_codec
from .machine import describe
from .measurement import measure, total

SCHEMA = 1


@dataclass
class Input:
    """One input file of a benchmark."""

    path: Path  # where it is read from
    name: str  # how it is reported: relative to the folder given, or the file's name


def inputs(paths) -> list[Input]:
    """Files under `paths` (folders expanded with data.list_files), each once, named
    relative to the folder it was found in."""
    out: dict[Path, Input] = {}
    for p in map(Path, paths):
        for f in list_files([p]):
            name = f.name if p.is_file() else f.relative_to(p).as_posix()
            out.setdefault(f.resolve(), Input(f, name))
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
        totals = {c: total([f["codecs"][c] for f in done], n) for c in self.codecs if done}
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
                "peak_memory_bytes": "see megazip/benchmark/memory.py: in-process peak RSS "
                "growth, or an external tool's own peak RSS; the larger of compress and "
                "decompress",
                "model_bits": "megazip: ideal code length of the model-coded segments",
                "prior_bits": "megazip: the same under the model alone (no adaptive stage)",
                "model_bytes": "megazip: bytes the range coder wrote for them",
                "ideal_bits": "megazip --ideal: whole file scored by the integer model",
            },
            "files": self.files,
            "total": {"files": len(done), "bytes": n, "codecs": totals},
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
    from ..train import pick_device

    device = str(pick_device(device))
    files = inputs(paths)
    known = classical()
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
            table[name], report.model = megazip_codec(model, device, ideal, first)
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
