"""The `megazip` command, run as a subprocess: gzip/zstd habits, pipes, and one-line
errors that leave no output file behind.

Two checkpoints are trained once per session through `megazip train` (test preset, 150
steps on word salad, seeds 0 and 1): enough for the model to win text segments, so the
files hold range-coder streams and a wrong model is actually detected.

Every command costs seconds (the interpreter imports torch), so the independent
scenarios run concurrently in one module fixture, each in its own folder; the tests
below then check what each scenario saw.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import megazip_cmd
from helpers import word_text

from megazip import checkpoint, container

# one torch thread per process: on this 2-core machine more threads mostly contend
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CODEC = ["--segment-size", "512", "--lanes", "4"]
SAMPLE = word_text(7, 3000)
WORKERS = 3


def megazip(*args, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        megazip_cmd(*map(str, args)),
        input=stdin if stdin is not None else b"",
        capture_output=True,
        cwd=cwd,
        env=ENV,
        timeout=600,
    )


def listing(folder) -> list[str]:
    return sorted(os.listdir(folder))  # hidden temporary files included


def assert_one_line_error(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode()
    assert r.returncode == 1, (r.returncode, err)
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("megazip: error: "), err
    return err


def concurrently(jobs: dict[str, Callable[[], object]]) -> dict[str, object]:
    """Run the jobs in a few threads; a job's exception is returned as its result."""

    def guard(fn):
        try:
            return fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by result()
            return e

    with ThreadPoolExecutor(WORKERS) as ex:
        futures = {name: ex.submit(guard, fn) for name, fn in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def result(results: dict, name: str):
    r = results[name]
    if isinstance(r, BaseException):
        raise r
    return r


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """(checkpoint A, checkpoint B): same data and recipe, different seeds."""
    root = tmp_path_factory.mktemp("models")
    data = root / "data"
    data.mkdir()
    for i in range(4):
        (data / f"words{i}.txt").write_bytes(word_text(100 + i, 8000))

    def train(out, seed):
        r = megazip(
            "train", "--data", data, "--config", "test", "--steps", 150, "--seq-len", 64,
            "--lr", "3e-3", "--warmup", 10, "--eval-every", 150, "--seed", seed,
            "--out", out, "--device", "cpu", "-q",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        return out

    done = concurrently({"A": lambda: train(root / "ckA", 0), "B": lambda: train(root / "ckB", 1)})
    return result(done, "A"), result(done, "B")


@pytest.fixture(scope="module")
def compressed(models, tmp_path_factory):
    """`megazip compress sample.txt` (mode 0644) run once: (folder, process, blob)."""
    d = tmp_path_factory.mktemp("compressed")
    f = d / "sample.txt"
    f.write_bytes(SAMPLE)
    f.chmod(0o644)
    r = megazip("compress", "-m", models[0], *CODEC, f)
    assert r.returncode == 0, r.stderr.decode()
    return d, r, (d / "sample.txt.mgz").read_bytes()


def _flip_last(blob: bytes) -> bytes:
    b = bytearray(blob)
    b[-8] ^= 0x20  # inside the last range-coder stream: caught by the checksum
    return bytes(b)


BAD_FILES = {
    "wrong-magic": lambda b: b"\x89MGY" + b[4:],
    "unknown-version": lambda b: b[:4] + b"\x07" + b[5:],
    "truncated-5": lambda b: b[:5],
    "truncated-header": lambda b: b[: container.scan(b).frames[0].size - 1],
    "truncated-body": lambda b: b[:-1],
    "flipped-byte": _flip_last,
}


@pytest.fixture(scope="module")
def runs(models, compressed, tmp_path_factory):
    """Every scenario below, run concurrently; name -> what it saw (or its exception)."""
    A, B = models
    blob = compressed[2]

    def folder(name: str) -> Path:
        return tmp_path_factory.mktemp(name)

    def put(d: Path, name: str, data: bytes) -> Path:
        (d / name).write_bytes(data)
        return d / name

    def decompress_o():
        d = folder("decompress_o")
        f = put(d, "s.mgz", blob)
        r = megazip("decompress", "-m", A, "-o", d / "restored.txt", f)
        return r, listing(d), (d / "restored.txt").read_bytes() if r.returncode == 0 else None

    def to_stdout():
        d = folder("stdout")
        f = put(d, "a.txt", SAMPLE)
        return megazip("compress", "-c", "-q", "-m", A, *CODEC, f), listing(d)

    def frames():  # several frames through pipes, and an info that counts them
        d = folder("frames")
        data = SAMPLE + bytes(range(256)) * 8
        r1 = megazip("compress", "-m", A, *CODEC, "--frame-size", 1000, stdin=data, cwd=d)
        r2 = megazip("decompress", "-m", A, stdin=r1.stdout, cwd=d)
        f = put(d, "f.mgz", r1.stdout)
        return r1, r2, megazip("info", f), data

    def pipe():
        d = folder("pipe")
        r1 = megazip("compress", "-m", A, *CODEC, stdin=SAMPLE, cwd=d)  # no file: stdin
        r2 = megazip("decompress", "-m", A, "-", stdin=r1.stdout, cwd=d)
        return r1, r2, listing(d)

    def rm():
        d = folder("rm")
        f = put(d, "doc.txt", SAMPLE)
        r1 = megazip("compress", "--rm", "-q", "-m", A, *CODEC, f)
        after_compress = listing(d)
        r2 = megazip("decompress", "--rm", "-m", A, d / "doc.txt.mgz")
        return r1, after_compress, r2, listing(d), f.read_bytes() if f.exists() else None

    def force():
        d = folder("force")
        f = put(d, "x.txt", SAMPLE)
        put(d, "x.txt.mgz", b"precious")
        r1 = megazip("compress", "--rm", "-m", A, *CODEC, f)
        seen = listing(d), (d / "x.txt.mgz").read_bytes(), f.read_bytes()
        r2 = megazip("compress", "-f", "-q", "-m", A, *CODEC, f)
        return r1, seen, r2, listing(d), (d / "x.txt.mgz").read_bytes()

    def exists_decompress():
        d = folder("exists")
        f = put(d, "s.mgz", blob)
        put(d, "s", b"keep me")
        return megazip("decompress", "-m", A, f), listing(d), (d / "s").read_bytes()

    def bad(damage):
        def job():
            d = folder(damage)
            f = put(d, "bad.mgz", BAD_FILES[damage](blob))
            return megazip("decompress", "--rm", "-m", A, f), listing(d)

        return job

    def wrong_model():
        d = folder("wrong_model")
        f = put(d, "s.mgz", blob)
        r1 = megazip("decompress", "-m", B, f)
        r2 = megazip("decompress", f)  # the model named in the header is not installed
        return r1, r2, listing(d)

    def missing():
        d = folder("missing")
        r1 = megazip("compress", "-m", A, d / "nope.txt")
        r2 = megazip("decompress", "-m", A, d / "nope.mgz")
        return r1, r2, listing(d)

    def directory():
        d = folder("directory")
        (d / "dir").mkdir()
        return megazip("compress", "-m", A, d / "dir"), listing(d), listing(d / "dir")

    def suffix():
        d = folder("suffix")
        f = put(d, "s.bin", blob)
        return megazip("decompress", "-m", A, f), listing(d)

    def several():  # zstd habit: a bad file among several is reported, the rest go on
        d = folder("several")
        good = [put(d, "a.mgz", blob), put(d, "c.mgz", blob)]
        bad = put(d, "b.mgz", BAD_FILES["flipped-byte"](blob))
        r = megazip("decompress", "-m", A, good[0], bad, good[1])
        return r, listing(d), [(d / n).read_bytes() for n in ("a", "c")]

    def info_several():  # as with decompress and test: a bad file is named, the rest go on
        d = folder("info_several")
        files = [put(d, "a.mgz", blob), put(d, "b.mgz", BAD_FILES["wrong-magic"](blob))]
        files += [d / "missing.mgz", put(d, "c.mgz", blob)]
        return megazip("info", *files), files

    jobs = {
        "help": lambda: megazip("--help"),
        "test": lambda: megazip("test", "-m", A, compressed[0] / "sample.txt.mgz"),
        "info": lambda: megazip("info", compressed[0] / "sample.txt.mgz"),
        "decompress_o": decompress_o,
        "stdout": to_stdout,
        "pipe": pipe,
        "frames": frames,
        "rm": rm,
        "force": force,
        "exists_decompress": exists_decompress,
        "wrong_model": wrong_model,
        "missing": missing,
        "directory": directory,
        "suffix": suffix,
        "several": several,
        "info_several": info_several,
        **{f"bad:{k}": bad(k) for k in BAD_FILES},
    }
    return concurrently(jobs)


# ------------------------------------------------------------------------------ help


def test_help_lists_every_command_with_a_description(runs):
    r = result(runs, "help")
    assert r.returncode == 0
    section = r.stdout.decode().split("Commands:", 1)[1]
    described = dict(re.findall(r"^  (\w[\w-]*)\s{2,}(\S.*)$", section, re.M))
    for cmd in ("compress", "decompress", "test", "info", "eval", "train", "models"):
        assert cmd in described, f"{cmd} missing from --help"
        assert len(described[cmd]) > 10, f"{cmd} has no description"


def test_help_lists_commands_in_definition_order(runs):
    """Bug: list_commands sat inside a helper function instead of the group class, so
    --help listed the commands alphabetically."""
    section = result(runs, "help").stdout.decode().split("Commands:", 1)[1]
    names = re.findall(r"^  (\w[\w-]*)\s{2,}", section, re.M)
    want = ["compress", "decompress", "test", "info", "eval", "bench", "train", "export"]
    assert names == [*want, "models"], names


def test_shared_options_mean_the_same_in_every_command():
    """--device, -m/--model and -q/--quiet are declared once: every command that takes
    one takes the same flags, default and choices."""
    from megazip.cli.main import main

    def shape(p):  # a flag's default is False however click spells it
        default = None if p.is_flag else p.default
        return tuple(p.opts), default, getattr(p.type, "choices", None), p.is_flag

    seen: dict[str, set] = {"device": set(), "model_name": set(), "quiet": set()}
    for cmd in main.commands.values():
        for p in cmd.params:
            if p.name in seen:
                seen[p.name].add(shape(p))
    assert seen["device"] == {(("--device",), "auto", ("auto", "cpu", "cuda"), False)}
    assert seen["model_name"] == {(("-m", "--model"), None, None, False)}
    assert seen["quiet"] == {(("-q", "--quiet"), None, None, True)}
    users = [n for n, c in main.commands.items() if any(p.name == "device" for p in c.params)]
    assert users == ["compress", "decompress", "test", "eval", "bench", "train"]


# ------------------------------------------------------------------------- good paths


def test_compress_writes_mgz_and_keeps_the_input(compressed, models):
    d, _, blob = compressed
    assert listing(d) == ["sample.txt", "sample.txt.mgz"]
    assert (d / "sample.txt").read_bytes() == SAMPLE
    h = container.scan(blob)
    assert h.length == len(SAMPLE) and [f.model_name for f in h.model_frames] == ["ckA"]
    want = checkpoint.load_int_model(models[0]).content_hash()
    assert h.model_frames[0].model_hash.hex() == want[:16]  # its first 8 bytes name it
    assert "model" in {container.METHOD_NAMES[s.method] for s in h.segments}


def test_summary_line_compares_with_zstd(compressed):
    r = compressed[1]
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "bits/byte" in lines[0] and "zstd -19" in lines[0]
    assert f"{len(SAMPLE):,}" in lines[0]
    assert r.stdout == b""


def test_output_file_gets_the_input_permissions(compressed):
    """Bug: the output is written through tempfile.mkstemp (mode 0600) and renamed, so
    FILE.mgz is unreadable by group and others; gzip and zstd give the output the
    input's permissions."""
    d = compressed[0]
    mode_in = stat.S_IMODE((d / "sample.txt").stat().st_mode)
    assert stat.S_IMODE((d / "sample.txt.mgz").stat().st_mode) == mode_in == 0o644


def test_decompress_to_a_named_output(runs):
    r, files, data = result(runs, "decompress_o")
    assert r.returncode == 0, r.stderr.decode()
    assert data == SAMPLE
    assert files == ["restored.txt", "s.mgz"]


def test_test_command_prints_ok(runs):
    r = result(runs, "test")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode().strip().endswith("OK")


def test_info_shows_the_original_size(runs):
    r = result(runs, "info")
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert re.search(r"original size\s+3,000 bytes", out), out
    assert "ckA" in out and "model" in out


def test_compress_to_stdout(runs, compressed):
    r, files = result(runs, "stdout")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""
    assert r.stdout == compressed[2], "not the bytes `compress FILE` wrote (deterministic)"
    assert files == ["a.txt"]


def test_stdin_to_stdout_round_trip(runs, compressed):
    r1, r2, files = result(runs, "pipe")
    assert r1.returncode == 0, r1.stderr.decode()
    assert r1.stdout == compressed[2]
    assert r2.returncode == 0, r2.stderr.decode()
    assert r2.stdout == SAMPLE
    assert files == []


def test_several_frames_stream_through_pipes(runs, models):
    r1, r2, info, data = result(runs, "frames")
    assert r1.returncode == 0, r1.stderr.decode()
    assert r2.returncode == 0 and r2.stdout == data, r2.stderr.decode()
    assert re.search(r"frames\s+6 ", info.stdout.decode()), info.stdout.decode()
    assert container.decompress(r1.stdout, str(models[0])) == data


def test_ctrl_c_leaves_no_output_and_no_temporary_file(models, tmp_path):
    """SIGINT while compressing, and while decompressing, once the first frames are
    written: exit status 130, one line, and the folder holds what it held before (no
    output, no temporary file)."""
    import signal
    import time

    data = word_text(40, 40_000)
    src = tmp_path / "big.txt"
    src.write_bytes(data)
    frames = dict(frame_size=1024, segment_size=256, lanes=4)
    packed = container.compress(data[:8192], checkpoint.load_int_model(models[0]), **frames)
    (tmp_path / "small.mgz").write_bytes(packed)
    for args, target in [
        (["compress", "-m", models[0], *CODEC, "--frame-size", "1024"], src),
        (["decompress", "-m", models[0], "-o", tmp_path / "small.out"], tmp_path / "small.mgz"),
    ]:
        before = listing(tmp_path)
        p = subprocess.Popen(
            megazip_cmd(*map(str, args), str(target)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            tmp = [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
            if tmp and tmp[0].stat().st_size > 0:
                break  # working: its first frames are in the temporary output
            time.sleep(0.02)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 130, err.decode()
        assert err.decode().strip().splitlines()[-1] == "megazip: interrupted"
        assert "Traceback" not in err.decode()
        assert listing(tmp_path) == before


def test_rm_removes_the_input_after_success_and_default_names(runs):
    r1, after_compress, r2, after_decompress, restored = result(runs, "rm")
    assert r1.returncode == 0, r1.stderr.decode()
    assert after_compress == ["doc.txt.mgz"]
    assert r2.returncode == 0, r2.stderr.decode()
    assert after_decompress == ["doc.txt"]
    assert restored == SAMPLE


def test_existing_output_needs_force(runs, compressed):
    r1, (files, old, original), r2, files_after, new = result(runs, "force")
    err = assert_one_line_error(r1)
    assert "exists" in err
    assert old == b"precious", "existing output changed without -f"
    assert original == SAMPLE, "--rm lost the input of a failed run"
    assert files == ["x.txt", "x.txt.mgz"]
    assert r2.returncode == 0, r2.stderr.decode()
    assert files_after == ["x.txt", "x.txt.mgz"]
    assert new == compressed[2]


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("damage", list(BAD_FILES))
def test_damaged_file_is_one_line_error_and_no_output(runs, damage):
    r, files = result(runs, f"bad:{damage}")
    err = assert_one_line_error(r)
    assert files == ["bad.mgz"], "output or temporary file left behind (or input removed)"
    if damage == "flipped-byte":
        assert "checksum" in err or "corrupt model stream" in err
    if damage == "unknown-version":
        assert "version" in err


def test_wrong_model_is_one_line_error_naming_the_model(runs, compressed):
    r1, r2, files = result(runs, "wrong_model")
    want = container.scan(compressed[2]).model_frames[0].model_hash.hex()[:16]
    err = assert_one_line_error(r1)
    assert want in err and "ckA" in err
    err = assert_one_line_error(r2)
    assert "ckA" in err
    assert files == ["s.mgz"]


def test_missing_input(runs):
    r1, r2, files = result(runs, "missing")
    assert "nope.txt" in assert_one_line_error(r1)
    assert "nope.mgz" in assert_one_line_error(r2)
    assert files == []


def test_existing_output_without_force_on_decompress(runs):
    r, files, kept = result(runs, "exists_decompress")
    assert "exists" in assert_one_line_error(r)
    assert kept == b"keep me"
    assert files == ["s", "s.mgz"]


def test_directory_as_input(runs):
    r, files, inside = result(runs, "directory")
    assert "directory" in assert_one_line_error(r)
    assert files == ["dir"] and inside == []


def test_a_bad_file_among_several_fails_alone(runs):
    r, files, restored = result(runs, "several")
    err = assert_one_line_error(r)
    assert "b.mgz" in err or "checksum" in err
    assert files == ["a", "a.mgz", "b.mgz", "c", "c.mgz"], "the good files were not all done"
    assert restored == [SAMPLE, SAMPLE]


def test_info_goes_on_past_a_bad_file(runs):
    """Bug: info stopped at the first bad file; like test and decompress it names each
    bad file in one error line, describes the good ones, and exits 1 at the end."""
    r, (a, b, missing, c) = result(runs, "info_several")
    assert r.returncode == 1, r.stderr.decode()
    err = r.stderr.decode()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"megazip: error: {b}: ") and "magic" in lines[0], lines
    assert lines[1].startswith("megazip: error: ") and str(missing) in lines[1], lines
    out = r.stdout.decode().splitlines()
    described = [line[:-1] for line in out if not line.startswith(" ")]
    assert described == [str(a), str(c)], out
    assert len(re.findall(r"original size\s+3,000 bytes", r.stdout.decode())) == 2


def test_decompress_refuses_a_name_without_the_suffix(runs):
    r, files = result(runs, "suffix")
    assert ".mgz" in assert_one_line_error(r)
    assert files == ["s.bin"]
