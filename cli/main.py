"""`megazip`: the command definitions. Each command parses its options (shared ones from
`options`), does its file handling through `fileio`, and calls the library; `errors` turns
expected failures into one line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from megazip import __version__

from . import fileio
from . import options as opt
from .errors import MegazipGroup, UserError, for_each_file
from .options import options


@click.group(cls=MegazipGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="megazip")
def main():
    """Lossless compression with a MEGABYTE byte-level transformer."""


def _coding_env() -> None:
    """Before numpy loads: its BLAS runs one thread (unless the user set it). Coding
    multiplies small matrices (a few rows per decoding step), where a second BLAS thread
    spins more than it helps; the second core runs the model a chunk ahead, or a worker
    process of its own (-T)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@main.command("compress")
@click.argument("files", nargs=-1)
@options(
    opt.output,
    opt.to_stdout,
    opt.force,
    opt.remove,
    opt.model(),
    opt.device,
    opt.threads,
    opt.quiet,
    opt.verbose,
)
@click.option(
    "--lanes",
    default=None,
    type=click.IntRange(1, 1 << 10),
    help="Segments coded together (more: faster, more memory; default: from the size).",
)
@click.option(
    "--segment-size",
    default=None,
    type=click.IntRange(1, 1 << 26),
    help="Bytes per segment (default: from the frame size, and --lanes if given).",
)
@click.option(
    "--frame-size",
    default=None,
    type=click.IntRange(1, 1 << 26),
    help="Bytes of input per frame, coded independently (default: 8 MiB).",
)
def compress_cmd(
    files,
    output,
    to_stdout,
    force,
    remove,
    model_name,
    device,
    threads,
    quiet,
    verbose,
    lanes,
    segment_size,
    frame_size,
):
    """Compress files to FILE.mgz (stdin to stdout with no file or '-')."""
    _coding_env()
    from megazip import container

    files = files or (fileio.STDIO,)
    outs = fileio.plan_outputs(files, output, to_stdout, fileio.compressed_name)
    dev = opt.pick_device(device, lazy=True)

    def one(f, o):
        fileio.check_target(f, o, force)
        stats: dict = {}
        with fileio.open_input(f) as fin:
            total = os.fstat(fin.fileno()).st_size if f != fileio.STDIO else None
            update, close = fileio.progress(total, quiet, Path(f).name)
            try:
                with fileio.open_output(o, force, like=f, compressed=True) as fout:
                    packed = container.compress_stream(
                        fin,
                        fout,
                        model_name,
                        lanes=lanes,
                        segment_size=segment_size,
                        frame_size=frame_size,
                        device=dev,
                        progress=update,
                        stats=stats,
                        verify=remove and f != fileio.STDIO,
                        threads=threads or None,
                    )
            except container.VerifyError:
                raise UserError(f"{f}: verification failed; input kept") from None
            finally:
                close()
        if not quiet:
            raw, z = stats["length"], stats["zstd_bytes"]
            bpb, zbpb = (8 * packed / raw, 8 * z / raw) if raw else (0.0, 0.0)
            click.echo(
                f"{f if f != fileio.STDIO else 'stdin'}: {raw:,} -> {packed:,} bytes, "
                f"{bpb:.3f} bits/byte (zstd -19: {z:,} bytes, {zbpb:.3f} bits/byte)",
                err=True,
            )
            if verbose:
                counts = {m: stats["methods"].count(m) for m in sorted(set(stats["methods"]))}
                click.echo(
                    f"  {stats['frames']} frames, segments: {counts}, model ideal "
                    f"{stats['model_bits'] / 8:,.0f} bytes, coded {stats['model_bytes']:,} bytes",
                    err=True,
                )
        if remove:
            fileio.remove_input(f)

    for_each_file(zip(files, outs, strict=True), one)


@main.command("decompress")
@click.argument("files", nargs=-1)
@options(
    opt.output,
    opt.to_stdout,
    opt.force,
    opt.remove,
    opt.model(in_file=True),
    opt.device,
    opt.threads,
    opt.quiet,
    opt.verbose,
)
def decompress_cmd(
    files, output, to_stdout, force, remove, model_name, device, threads, quiet, verbose
):
    """Decompress FILE.mgz to FILE (stdin to stdout with no file or '-')."""
    _coding_env()
    from megazip import container

    files = files or (fileio.STDIO,)
    outs = fileio.plan_outputs(files, output, to_stdout, fileio.decompressed_name)
    dev = opt.pick_device(device, lazy=True)

    def one(f, o):
        fileio.check_target(f, o, force)
        with fileio.open_input(f) as fin:
            update, close = fileio.progress(_original_size(fin, f), quiet, Path(f).name)
            try:
                with fileio.open_output(o, force, like=f) as fout:
                    n = container.decompress_stream(
                        fin, fout, model_name, device=dev, progress=update, threads=threads or None
                    )
            finally:
                close()
            if verbose:
                click.echo(f"{f}: {fin.tell():,} -> {n:,} bytes", err=True)
        if remove:
            fileio.remove_input(f)

    for_each_file(zip(files, outs, strict=True), one)


def _original_size(fin, f) -> int | None:
    """The original size a regular .mgz file holds (its frame headers), for the progress
    bar; None for a pipe. The stream is left at its start."""
    from megazip import container

    if f == fileio.STDIO or not fin.seekable():
        return None
    try:
        return container.scan(fin).length
    except container.FormatError:
        return None  # decompress_stream reports it
    finally:
        fin.seek(0)


class _Sink:
    def write(self, b) -> int:
        return len(b)


@main.command("test")
@click.argument("files", nargs=-1, required=True)
@options(opt.model(in_file=True), opt.device, opt.threads, opt.quiet)
def test_cmd(files, model_name, device, threads, quiet):
    """Verify .mgz files: decompress in memory and check every frame's checksum."""
    _coding_env()
    from megazip import container

    dev = opt.pick_device(device, lazy=True)

    def one(f):
        with fileio.open_input(f) as fin:
            update, close = fileio.progress(_original_size(fin, f), quiet, Path(f).name)
            try:
                container.decompress_stream(
                    fin, _Sink(), model_name, device=dev, progress=update, threads=threads or None
                )
            finally:
                close()
        if not quiet:
            click.echo(f"{f}: OK")

    for_each_file([(f,) for f in files], one)


@main.command("info")
@click.argument("files", nargs=-1, required=True)
def info_cmd(files):
    """Describe .mgz files: frames, models, sizes, segments."""
    from megazip import container

    def one(f):
        with fileio.open_input(f) as fin:
            h = container.scan(fin)
        methods = [container.METHOD_NAMES[s.method] for s in h.segments]
        by = {m: methods.count(m) for m in container.METHOD_NAMES.values() if m in methods}
        bpb = 8 * h.size / h.length if h.length else 0.0
        models = {(fr.model_name, fr.model_hash.hex()[:16]) for fr in h.model_frames}
        lanes = sorted({fr.lanes for fr in h.model_frames})
        blocks = sum(len(fr.blocks) for fr in h.frames)
        click.echo(f"{f}:")
        click.echo(f"  format version   {container.VERSION}")
        click.echo(
            "  model            "
            + (", ".join(f"{n} (sha256 {x}...)" for n, x in sorted(models)) or "none needed")
        )
        click.echo(f"  original size    {h.length:,} bytes")
        click.echo(f"  compressed size  {h.size:,} bytes ({bpb:.3f} bits/byte)")
        click.echo(f"  frames           {len(h.frames)} (headers {h.header_bytes:,} bytes)")
        click.echo(
            f"  segments         {len(h.segments)}: "
            + (", ".join(f"{n} {m}" for m, n in by.items()) or "none")
        )
        stages = sorted({fr.stage for fr in h.frames if fr.stage})
        if stages:
            click.echo(f"  adaptive stage   version {', '.join(map(str, stages))}")
        if lanes:
            click.echo(f"  lanes per block  {', '.join(map(str, lanes))} ({blocks} model blocks)")
        if len(h.frames) == 1:
            click.echo(f"  crc-32           {h.frames[0].crc:08x}")

    for_each_file([(f,) for f in files], one)


@main.command("eval")
@click.argument("paths", nargs=-1, required=True)
@options(opt.model(), opt.device)
@click.option(
    "--int",
    "use_int",
    is_flag=True,
    help="Also score the integer coding model alone and with the adaptive stage.",
)
@click.option(
    "--field",
    default="text",
    show_default=True,
    help="The field (.jsonl) or column (Parquet) that holds each document.",
)
@click.option(
    "--group-by",
    metavar="FIELD",
    help="Total .jsonl/Parquet records per value of this field (default: per file; "
    "files and tar members are totalled per extension).",
)
@click.option("--raw", is_flag=True, help="Score .jsonl, .tar and .parquet files as plain bytes.")
@click.option(
    "--batch",
    type=click.IntRange(1, 1 << 14),
    default=None,
    help="Documents scored together as lanes of one batch (default: 16, 256 on CUDA).",
)
@click.option(
    "--lanes",
    type=click.IntRange(1, 1 << 14),
    default=1,
    show_default=True,
    help="Split each document into this many segments scored as independent streams "
    "(less context, so more bits; stated in the output).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Arithmetic of the float model (bfloat16: about 2.5x faster on a CPU with "
    "AVX512-BF16, numbers within ~0.1 % of float32's).",
)
@opt.threads_option(
    "CPU threads scoring (0: this process's cores, shared among torchrun ranks). "
    "The numbers are the same for any N."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option("--summary", is_flag=True, help="Table: per-kind and total rows only.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Write a histogram of bits/byte per document to this file (.png, .svg, .pdf).",
)
@options(opt.quiet)
def eval_cmd(
    paths,
    model_name,
    device,
    use_int,
    field,
    group_by,
    raw,
    batch,
    lanes,
    dtype,
    threads,
    as_json,
    as_csv,
    summary,
    plot,
    quiet,
):
    """Measure density: bits per byte of a model on files and datasets (folders, .jsonl,
    .tar, Parquet), per document, per kind and overall. Under torchrun
    (torchrun --nproc_per_node=N -m megazip eval ...) the documents are split across the
    processes and the totals are those of a single process."""
    from megazip import checkpoint, distributed
    from megazip.datasets import iter_documents
    from megazip.evaluate import (
        INT_SEGMENT,
        default_threads,
        format_csv,
        format_table,
        plot_histogram,
        report,
        score_documents,
    )

    if as_json and as_csv:
        raise UserError("--json and --csv exclude each other")
    model_name = model_name or checkpoint.DEFAULT_MODEL
    world = distributed.join(opt.pick_device(device))
    try:
        dev = world.device(opt.pick_device(device))
        cuda = dev.startswith("cuda")
        # a shipped model may carry only its integer coding model: then score that alone
        has_float = checkpoint.has_float_weights(model_name)
        model = checkpoint.load(model_name, dev)[0] if has_float else None
        use_int = use_int or not has_float
        int_model = checkpoint.load_int_model(model_name).to(dev) if use_int else None
        docs = distributed.shard(iter_documents(paths, field, group_by, raw), world)
        label = f"rank 0 of {world.size}" if world.size > 1 else "eval"
        update, close = fileio.progress(None, quiet or not world.is_main, label)
        try:
            results = score_documents(
                docs,
                model,
                int_model,
                dev,
                batch=batch or (256 if cuda else 16),
                lanes=lanes,
                dtype=None if dtype == "float32" else dtype,
                bucket=16 if cuda else None,  # pad final chunks on CUDA (float is inexact there)
                on_bytes=update,
                threads=0 if cuda else (threads or max(1, default_threads(dev) // world.size)),
            )
        finally:
            close()
        gathered = distributed.gather(results, world)
    finally:
        distributed.close(world)
    if not world.is_main:
        return
    if not gathered:
        raise UserError("no documents found in " + ", ".join(paths))
    settings = {"lanes": lanes, "dtype": dtype}
    if use_int:
        settings["int_segment"] = INT_SEGMENT
    doc = report(gathered, model_name, settings)
    if plot:
        plot_histogram(doc, plot)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    elif as_csv:
        click.echo(format_csv(doc), nl=False)
    else:
        click.echo(format_table(doc, documents=not summary))


@main.command("bench")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--codecs",
    default=None,
    help="Comma-separated: gzip-9,bzip2-9,xz-9e,zstd-3,zstd-19,zstd-22-long,brotli-11,"
    "zpaq-m5,7z-ppmd,megazip (default: all; those not installed are skipped).",
)
@options(opt.model(), opt.device)
@click.option(
    "--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True
)
@click.option("--out", "out_dir", help="Also write NAME.FORMAT and NAME.json into this folder.")
@click.option("--plot", is_flag=True, help="With --out: NAME.png and NAME_speed.png too.")
@click.option(
    "--repeat",
    type=click.IntRange(1, 100),
    default=None,
    help="Runs per file and codec (default: up to 3 within 1 s; megazip 1).",
)
@click.option("--ideal", is_flag=True, help="megazip: also score whole files (one more pass).")
@options(opt.quiet)
def bench_cmd(paths, codecs, model_name, device, fmt, out_dir, plot, repeat, ideal, quiet):
    """Compare megazip with classical codecs: size, bits/byte, speed, memory.

    NAME is the input folder's name. Every result is verified by a round trip. On
    Ctrl-C the rows measured so far are still printed and saved (exit status 130)."""
    from tqdm import tqdm

    from megazip import benchmark, checkpoint

    names, unavailable = benchmark.parse_codecs(codecs)
    if plot:
        if not out_dir:
            raise UserError("--plot needs --out DIR")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("--plot needs matplotlib: pip install 'megazip[plot]'") from None
    if codecs and unavailable and not quiet:
        for n, why in unavailable.items():
            click.echo(f"megazip: skipping {n}: {why}", err=True)
    files = benchmark.inputs(paths)
    bar = tqdm(
        total=len(files) * len(names),
        unit="run",
        file=sys.stderr,
        leave=False,
        disable=quiet or not sys.stderr.isatty(),
    )
    try:
        doc = benchmark.run(
            paths,
            names,
            model=model_name or checkpoint.DEFAULT_MODEL,
            device=opt.pick_device(device),
            repeat=repeat,
            ideal=ideal,
            unavailable=unavailable,
            on_start=lambda path, codec: bar.set_postfix_str(f"{path} {codec}"),
            on_result=lambda path, codec, row: bar.update(1),
        )
    finally:
        bar.close()
    name = benchmark.report_name(paths)
    click.echo(benchmark.render(doc, fmt, name), nl=False)
    if out_dir:
        written = benchmark.save(doc, out_dir, name, fmt)
        if plot and not doc["interrupted"]:
            written += benchmark.plot(doc, out_dir, name)
        if not quiet:
            click.echo(f"megazip: wrote {', '.join(map(str, written))}", err=True)
    if doc["interrupted"]:
        click.echo("megazip: interrupted (partial results)", err=True)
        sys.exit(130)


@main.command("train")
@click.option("--recipe", help="A named recipe (tiny, tiny-gpu, small): model, data, schedule.")
@click.option("--data", "-d", multiple=True, help="Training files or folders (repeatable).")
@click.option("--valid", multiple=True, help="Held-out files or folders (default: split by file).")
@click.option("--out", "-o", default="runs/megazip", show_default=True, help="Checkpoint folder.")
@click.option(
    "--config", "model", default="tiny", show_default=True, help="Model preset: tiny, small, test."
)
@click.option("--steps", default=2000, show_default=True)
@click.option("--batch-size", default=8, show_default=True, help="Windows per step per process.")
@click.option("--seq-len", default=0, help="Bytes per window (default: the model's context).")
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--warmup", default=50, show_default=True)
@click.option("--eval-every", default=100, show_default=True)
@click.option("--save-every", default=500, show_default=True)
@click.option("--seed", default=0, show_default=True)
@options(opt.device)
@click.option("--threads", default=0, help="CPU threads for torch (default: all cores).")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@click.option(
    "--stop-at", default=0, help="Stop at this step (with a checkpoint), to resume later."
)
@click.option(
    "--time-limit",
    default=0.0,
    help="Seconds of training: the schedule ends then, or at --steps if sooner (0: none).",
)
@options(opt.quiet)
@click.pass_context
def train_cmd(ctx, recipe, **opts):
    """Train a MEGABYTE model on files (also under torchrun for several processes)."""
    from click.core import ParameterSource

    from megazip import train as training
    from megazip.model import PRESETS

    quiet = opts.pop("quiet")
    opts["model"] = opts.pop("model")
    given = {
        k: v for k, v in opts.items() if ctx.get_parameter_source(k) != ParameterSource.DEFAULT
    }
    for k in ("data", "valid"):
        opts[k] = list(opts[k])
        if k in given:
            given[k] = list(given[k])
    if recipe:
        cfg = training.recipe(recipe, **given, progress=not quiet)
    else:
        if not opts["data"]:
            raise UserError("give --data (files or folders to train on) or --recipe")
        cfg = training.TrainConfig(**opts, min_lr=opts["lr"] / 10, progress=not quiet)
    if cfg.model not in PRESETS:
        raise UserError(f"unknown config {cfg.model!r} (known: {', '.join(PRESETS)})")
    summary = training.train(cfg)
    if int(os.environ.get("RANK", 0)) == 0:
        click.echo(
            f"step {summary['step']}: train {summary['train_bpb']:.3f} bits/byte, "
            f"validation {summary['valid_bpb']:.3f} bits/byte, "
            f"{summary['wall_s']:.0f} s -> {cfg.out}",
            err=True,
        )


@main.command("export")
@click.argument("folder")
def export_cmd(folder):
    """Export the integer coding model of a checkpoint folder (int_model.safetensors) from its
    float weights, calibrated on the training windows its config names."""
    from megazip import checkpoint
    from megazip.train import export_checkpoint

    if not (Path(folder) / checkpoint.CONFIG_FILE).is_file():
        raise UserError(f"{folder}: not a checkpoint folder (no {checkpoint.CONFIG_FILE})")
    path = export_checkpoint(folder)
    click.echo(f"wrote {path} (content hash {checkpoint.load_int_model(folder).content_hash()})")


@main.command("models")
def models_cmd():
    """List the installed models: size, density and speed."""
    from megazip import checkpoint

    names = checkpoint.shipped_model_names()
    if not names:
        click.echo("no models installed")
        return
    click.echo(
        f"{'name':<8} {'params':>8} {'on disk':>8} {'valid float/int':>16} "
        f"{'canterbury':>10} {'compress':>10} {'decompress':>10}  description"
    )
    for name in names:
        meta = checkpoint.read_meta(name)
        files = checkpoint.shipped_models_dir().glob(f"{name}.*safetensors")
        size = sum(f.stat().st_size for f in files)
        dflt = " (default)" if name == checkpoint.DEFAULT_MODEL else ""
        vf, vi = meta.get("valid_bpb_float"), meta.get("valid_bpb_int")
        valid = f"{vf:.3f}/{vi:.3f}" if vf and vi else "-"
        cant = meta.get("canterbury_bpb", {}).get("megazip")
        c, d = meta.get("compress_kBps"), meta.get("decompress_kBps")
        click.echo(
            f"{name:<8} {meta.get('params', 0) / 1e6:>7.1f}M {size / 1e6:>6.1f}MB {valid:>16} "
            f"{(f'{cant:.3f}' if cant else '-'):>10} "
            f"{(f'{c:.1f} KB/s' if c else '-'):>10} {(f'{d:.1f} KB/s' if d else '-'):>10}  "
            f"{meta.get('description', '')}{dflt}"
        )
    click.echo("bits/byte: validation split (float/integer model), Canterbury (real .mgz size)")


if __name__ == "__main__":
    main()
