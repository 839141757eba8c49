"""A description of the machine a benchmark ran on, for its results files.

The helpers live in megazip.bench (so the `megazip bench` command has them); this module
keeps `from machine import describe, markdown` working for the scripts in bench/.
"""

from megazip.bench import cpu_model, describe, markdown

__all__ = ["cpu_model", "describe", "markdown"]
