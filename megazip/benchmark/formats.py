"""A benchmark report (from report.run) as markdown, CSV or JSON, and saved to files."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

from .machine import markdown
from .measurement import MB


# table cells: "—" where a value is unknown
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
    """The report as indented JSON with a final newline."""
    return json.dumps(doc, indent=2) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json}


def render(doc: dict, fmt: str, name: str = "megazip bench") -> str:
    """The report in format md, csv or json."""
    return to_markdown(doc, f"megazip bench: {name}") if fmt == "md" else FORMATS[fmt](doc)


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Write `path` through `write(temporary path)` then a rename, so that a reader never
    sees half a file; returns `path`."""
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
        written.append(write_atomic(out / f"{name}.{f}", lambda p, t=text: p.write_text(t)))
    return written
