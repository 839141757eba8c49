"""The machine a benchmark ran on: CPU, cores, OS, Python, torch and the device used."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else platform.processor())."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(device: str = "cpu") -> dict:
    """CPU model, cores, OS, Python and torch versions, and the device used (plus the
    GPU's name on CUDA)."""
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
    """A machine description (from `describe`) as one line: 'key: value, ...'."""
    return ", ".join(f"{k}: {v}" for k, v in d.items())
