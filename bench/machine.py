"""A description of the machine a benchmark ran on, for its results files.

The helpers live in megazip.benchmark.machine (so the `megazip bench` command has them);
this module keeps `from machine import describe, markdown` working for the scripts in
bench/ that put this folder on sys.path (bench/model_card.py).
"""

from megazip.benchmark.machine import cpu_model, describe, markdown

__all__ = ["cpu_model", "describe", "markdown"]
