"""How the `megazip` command fails: one line on stderr (`megazip: error: ...`), exit status
1, never a traceback; Ctrl-C is one line and status 130. With several input files a
failure names its file and the next file goes on, as zstd does."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import click


class UserError(click.ClickException):
    """A failure caused by the input or the environment: one line, exit code 1."""

    def show(self, file=None):
        click.echo(f"megazip: error: {self.format_message()}", err=True)


def user_error(e: Exception) -> UserError | None:
    """The one-line error for an expected failure (bad input, environment), else None
    (a bug: let its traceback through)."""
    from megazip.checkpoint import ModelNotFound

    if isinstance(e, UserError):
        return e
    if isinstance(e, MemoryError):
        return UserError("out of memory")
    if isinstance(e, (ModelNotFound, FileNotFoundError, IsADirectoryError, ValueError)):
        return UserError(str(e))  # includes container.FormatError and ModelMismatch
    if isinstance(e, OSError):
        return UserError(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    if isinstance(e, RuntimeError):
        return UserError(str(e).splitlines()[0])
    return None


class MegazipGroup(click.Group):
    """The command group: turns expected exceptions into one-line errors, and lists its
    commands in `--help` in the order they were defined."""

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("megazip: interrupted", err=True)
            sys.exit(130)
        except Exception as e:
            err = user_error(e)
            if err is None:
                raise
            raise err from None


def for_each_file(jobs: Iterable[tuple], work: Callable[..., None]) -> None:
    """work(*job) for every job, the first item of a job being its input file ('-' for
    stdin). An expected failure is reported in one line that names the file, and the next
    job goes on; at the end the exit status is 1 if any failed. A bug (an exception that
    `user_error` does not map) or Ctrl-C stops at once."""
    failed = 0
    for job in jobs:
        try:
            work(*job)
        except Exception as e:
            err = user_error(e)
            if err is None:
                raise
            name = job[0]
            if name != "-" and name not in err.message:
                err.message = f"{name}: {err.message}"
            err.show()
            failed += 1
    if failed:
        raise click.exceptions.Exit(1)
