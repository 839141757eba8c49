"""The command line's file handling, with gzip/zstd habits: where each input's output goes,
the checks made before any work, reading an input (a file, or `-` for stdin) and writing
an output atomically, both as streams (memory does not grow with the file), and the
progress bar. Nothing here knows about models or the format."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import UserError

SUFFIX = ".mgz"
STDIO = "-"  # the input name for stdin


def compressed_name(path: str) -> str:
    """FILE -> FILE.mgz."""
    return path + SUFFIX


def decompressed_name(path: str) -> str:
    """FILE.mgz -> FILE; UserError for a name without the suffix (or only the suffix)."""
    if not path.endswith(SUFFIX) or len(Path(path).name) == len(SUFFIX):
        raise UserError(f"{path}: unknown suffix (expected {SUFFIX}); use -o or -c")
    return path[: -len(SUFFIX)]


def plan_outputs(
    files: Sequence[str], output: str | None, to_stdout: bool, name_for: Callable[[str], str]
) -> list[str | None]:
    """The output path of each input (None: stdout), decided before any work: stdout with
    -c, or for stdin without -o; else -o (UserError with several inputs); else
    name_for(input). name_for may raise UserError (an input it cannot name)."""
    if output and len(files) > 1:
        raise UserError("-o/--output takes a single input file")
    outs: list[str | None] = []
    for f in files:
        if to_stdout or (f == STDIO and not output):
            outs.append(None)
        elif output:
            outs.append(output)
        else:
            outs.append(name_for(f))
    return outs


def check_target(path: str, out: str | None, force: bool) -> None:
    """UserError, before any work, when the input file is missing or the output (None:
    stdout) exists and force is not given."""
    if path != STDIO and not Path(path).exists():
        raise UserError(f"{path}: no such file")
    if out is not None and Path(out).exists() and not force:
        raise UserError(f"{out}: already exists (use -f to overwrite)")


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """A binary stream of a file, or of stdin for '-', read as the caller goes (for
    inputs of any size). UserError for stdin on a terminal, a folder or a missing file."""
    if path == STDIO:
        if sys.stdin.isatty():
            raise UserError("refusing to read data from a terminal (give a file, or pipe)")
        yield sys.stdin.buffer
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{path}: is a directory")
    if not p.exists():
        raise UserError(f"{path}: no such file")
    with open(p, "rb") as f:
        yield f


@contextlib.contextmanager
def open_output(
    path: str | None, force: bool, like: str = STDIO, compressed: bool = False
) -> Iterator[BinaryIO]:
    """A binary stream to write an output to, as the caller goes: stdout (path None;
    UserError for compressed data on a terminal), or, for `path`, a temporary file in
    the target's folder that is renamed over the target only when the block completes,
    and removed on any failure or Ctrl-C, so the target is either untouched or whole.
    The file gets the permissions of the input `like` (for stdin: 0666 less the umask),
    as gzip does. UserError if the target exists and not force."""
    if path is None:
        if compressed and sys.stdout.isatty():
            raise UserError("refusing to write compressed data to a terminal (use -o or -c |)")
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    if target.exists() and not force:
        raise UserError(f"{path}: already exists (use -f to overwrite)")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, _mode_like(like))
        os.replace(tmp, target)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def remove_input(path: str) -> None:
    """Delete an input file after its job succeeded (--rm); stdin is left alone."""
    if path != STDIO:
        Path(path).unlink()


def progress(total: int | None, quiet: bool, label: str):
    """A byte progress bar on stderr, shown only when stderr is a terminal and not quiet;
    returns (update(n_bytes), close)."""
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=label,
        file=sys.stderr,
        leave=False,
        disable=quiet or not sys.stderr.isatty(),
    )
    return bar.update, bar.close


def _mode_like(path: str) -> int:
    """The permission bits of the file `path`, or 0666 less the umask for stdin."""
    if path != STDIO and Path(path).is_file():
        return Path(path).stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
