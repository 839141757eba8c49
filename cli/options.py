"""The options that several commands share, each declared once here, so that `--device`
or `-m/--model` means the same (and has the same default) in every command that takes
it. Apply them with `@options(...)`, in the order they should appear in `--help`."""

from __future__ import annotations

import click

DEVICES = ("auto", "cpu", "cuda")

device = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="Where the model runs (auto: CUDA when available).",
)


def model(in_file: bool = False):
    """-m/--model NAME|PATH: a shipped model's name or a checkpoint folder. Its value is
    None when not given: the command then uses the default model, or, with in_file
    (decompress, test), the model named in the file."""
    default = "the model named in the file" if in_file else "the default model, see megazip models"
    return click.option(
        "-m",
        "--model",
        "model_name",
        default=None,
        metavar="NAME|PATH",
        help=f"Shipped model name or checkpoint folder (default: {default}).",
    )


def threads_option(help_text: str):
    """-T/--threads N (0: the default), with a command's own description of its use."""
    return click.option(
        "-T", "--threads", type=click.IntRange(0, 1 << 10), default=0, help=help_text
    )


threads = threads_option(
    "Cores to use (0: all): worker processes for independent blocks, and the model a "
    "chunk ahead while compressing. The output is the same for any N."
)
quiet = click.option("-q", "--quiet", is_flag=True, help="Quiet: no progress bar, fewer messages.")
verbose = click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also print details: segment methods (compress), sizes (decompress).",
)
output = click.option("-o", "--output", help="Write to this file (one input only).")
to_stdout = click.option(
    "-c", "--stdout", "to_stdout", is_flag=True, help="Write to standard output."
)
force = click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
remove = click.option(
    "--rm", "remove", is_flag=True, help="Remove the input after verified success."
)


def options(*opts):
    """A decorator applying click options so that they appear in --help in this order."""

    def wrap(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return wrap


def pick_device(name: str, lazy: bool = False) -> str:
    """The torch device string for a --device choice (auto: cuda if available). With
    lazy, "auto" stays "auto" for the library to resolve when it loads a model, so a
    command that never needs one never imports torch."""
    if lazy and name == "auto":
        return name
    from megazip.train import pick_device

    return str(pick_device(name))
