"""Peak memory of one call, in bytes (the `peak_memory_bytes` column).

- Code run inside this Python process (gzip, bzip2, xz, zstd, brotli, megazip): how far
  the process's peak resident set rose above its resident set at the start of the call
  (Linux VmHWM, reset through /proc/self/clear_refs just before the call). Memory that
  the allocator reuses without asking the kernel is not seen, so this is a lower bound.
- External tools (zpaq, 7-Zip), run with `run_tool` during the call: the tool process's
  own peak resident set (VmHWM), its executable and libraries included, sampled every
  5 ms (a lower bound too).
- None where the platform offers neither.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_tool_peak: int | None = None  # peak RSS of the external tools run by the current call


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


def _hwm(pid: int) -> int:
    """Peak RSS of a running process in bytes (Linux /proc), 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(fn: Callable[[bytes], bytes], arg: bytes) -> tuple[bytes, float, int | None]:
    """(fn(arg), seconds of wall time, peak memory in bytes or None): the peak of the
    external tools `fn` ran through `run_tool` if any, else this process's peak RSS
    growth during the call."""
    global _tool_peak
    _tool_peak = None
    rss0 = _reset_peak()
    t = time.perf_counter()
    out = fn(arg)
    seconds = time.perf_counter() - t
    if _tool_peak is not None:
        return out, seconds, _tool_peak
    hwm = _status().get("VmHWM")
    return out, seconds, max(0, hwm - rss0) if rss0 is not None and hwm else None


def run_tool(cmd: list[str], cwd: str) -> None:
    """Run an external tool quietly, recording its peak RSS for `timed`: the VmHWM of its
    own process, sampled every 5 ms (getrusage would not do: after fork and exec it also
    counts the RSS of this process). RuntimeError if the tool fails; on Ctrl-C the tool
    is ended before the KeyboardInterrupt goes on."""
    global _tool_peak
    status = None
    with subprocess.Popen(
        cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as p:
        try:
            while status is None:
                _tool_peak = max(_tool_peak or 0, _hwm(p.pid)) or None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    status = p.wait(timeout=0.005)
        except BaseException:
            p.kill()
            p.wait()
            raise
    if status != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit status {status}): {' '.join(cmd)}")
