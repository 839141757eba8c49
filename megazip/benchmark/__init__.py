"""Benchmark: megazip next to classical codecs, per file and for the whole set.

    report = run(["corpus/"], ["xz-9e", "zstd-19", "megazip"], model="tiny")
    print(to_markdown(report))

For every file and codec: compressed bytes, bits per byte, ratio, compression and
decompression speed in MB/s, and peak memory, every run verified by a round trip.

- machine.py: the machine it ran on (describe, markdown)
- memory.py: peak memory of one call (in-process RSS growth, or an external tool's RSS)
- codecs.py: the codecs by name (classical, external archivers, megazip)
- measurement.py: one codec on one input (a row, with units), and totals over files
- report.py: running every codec on every file into the JSON schema (run)
- formats.py: the report as markdown, CSV or JSON, saved atomically (render, save)
- figures.py: bits/byte bars and ratio against speed (plot; needs matplotlib)
"""

from .codecs import CODEC_NAMES, MAX_RUNS, Codec, parse_codecs
from .figures import plot
from .formats import render, save, to_csv, to_json, to_markdown
from .machine import cpu_model, describe, markdown
from .measurement import MB, measure
from .report import SCHEMA, Report, inputs, report_name, run

__all__ = [
    "CODEC_NAMES",
    "MAX_RUNS",
    "MB",
    "SCHEMA",
    "Codec",
    "Report",
    "cpu_model",
    "describe",
    "inputs",
    "markdown",
    "measure",
    "parse_codecs",
    "plot",
    "render",
    "report_name",
    "run",
    "save",
    "to_csv",
    "to_json",
    "to_markdown",
]
