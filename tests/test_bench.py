"""megazip bench (megazip.benchmark and `megazip bench`): every codec row present and
verified, sizes equal to what the codec libraries produce, megazip's row a real round
trip, a stable JSON schema, md/csv that parse, plots, and partial results on Ctrl-C.

The model is a test-preset checkpoint folder (config.json, model.safetensors,
int_model.safetensors, as `megazip train` writes it) trained a few seconds on word salad, so
the container codes the text file with the model and the range-coder path is measured.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import subprocess

import pytest
import torch
import zstandard
from click.testing import CliRunner
from conftest import megazip_cmd
from helpers import fit_briefly, word_text
from megazip.cli.main import main as cli

import megazip
from megazip import benchmark, checkpoint
from megazip.evaluate import int_code_lengths
from megazip.export import export, save_int_model
from megazip.model import PRESETS, Megabyte

CLASSICAL = ["gzip-9", "bzip2-9", "xz-9e", "zstd-3", "zstd-19", "zstd-22-long"]
ROW_KEYS = {
    "bytes",
    "bits_per_byte",
    "ratio",
    "compress_MBps",
    "decompress_MBps",
    "compress_seconds",
    "decompress_seconds",
    "peak_memory_bytes",
    "runs",
    "verified",
}
MEGAZIP_KEYS = ROW_KEYS | {
    "model_bits",
    "prior_bits",
    "model_bytes",
    "header_bytes",
    "segments",
    "ideal_bits",
    "peak_gpu_memory_bytes",
}
TOP_KEYS = {
    "schema",
    "megazip",
    "created",
    "inputs",
    "machine",
    "model",
    "codecs",
    "unavailable",
    "repeat",
    "interrupted",
    "units",
    "files",
    "total",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        data = torch.tensor(list(word_text(1, 20000)))
        m = Megabyte(PRESETS["test"])
        fit_briefly(m, data, 150)
        folder = tmp_path_factory.mktemp("model")
        checkpoint.save(folder, m)
        calibration = torch.stack([data[s : s + 64] for s in range(0, 64 * 16, 64)])
        save_int_model(export(m, calibration), folder / checkpoint.INT_MODEL_FILE)
        yield folder
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "salad.txt").write_bytes(word_text(7, 2000))
    (d / "table.bin").write_bytes(bytes(range(256)) * 6 + b"megazip" * 100)
    return d


@pytest.fixture(scope="module")
def report(corpus, model_dir):
    names, unavailable = benchmark.parse_codecs(None)  # every known codec that is installed
    return benchmark.run([corpus], names, model=str(model_dir), unavailable=unavailable)


def test_every_codec_row_present_and_verified(report, corpus):
    expected, unavailable = benchmark.parse_codecs(None)
    assert set(CLASSICAL) | {"megazip"} <= set(expected)
    assert list(report["codecs"]) == expected
    assert set(report["unavailable"]) == set(unavailable)
    assert set(expected) | set(unavailable) == set(benchmark.CODEC_NAMES)
    assert [f["path"] for f in report["files"]] == ["salad.txt", "table.bin"]
    for f in report["files"]:
        assert f["bytes"] == (corpus / f["path"]).stat().st_size
        assert list(f["codecs"]) == expected
        for row in f["codecs"].values():
            assert row["verified"] is True
            assert row["bits_per_byte"] == pytest.approx(8 * row["bytes"] / f["bytes"])
            assert row["ratio"] == pytest.approx(f["bytes"] / row["bytes"])
            assert row["compress_MBps"] > 0 and row["decompress_MBps"] > 0
            assert 1 <= row["runs"] <= benchmark.MAX_RUNS
    assert all(r["runs"] == 1 for r in (f["codecs"]["megazip"] for f in report["files"]))
    assert report["interrupted"] is False


def test_sizes_equal_the_codec_libraries(report, corpus):
    zstd_long = zstandard.ZstdCompressionParameters.from_level(
        22, enable_ldm=True, window_log=27, write_checksum=True
    )
    sizes = {
        "gzip-9": lambda d: len(gzip.compress(d, 9)),
        "bzip2-9": lambda d: len(bz2.compress(d, 9)),
        "xz-9e": lambda d: len(lzma.compress(d, preset=9 | lzma.PRESET_EXTREME)),
        "zstd-3": lambda d: len(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(d)),
        "zstd-19": lambda d: len(
            zstandard.ZstdCompressor(level=19, write_checksum=True).compress(d)
        ),
        "zstd-22-long": lambda d: len(
            zstandard.ZstdCompressor(compression_params=zstd_long).compress(d)
        ),
    }
    if "brotli-11" in report["codecs"]:
        import brotli

        sizes["brotli-11"] = lambda d: len(brotli.compress(d, quality=11))
    for f in report["files"]:
        data = (corpus / f["path"]).read_bytes()
        for name, size in sizes.items():
            assert f["codecs"][name]["bytes"] == size(data), (f["path"], name)
    for name in ("zpaq-m5", "7z-ppmd"):  # archivers: only where installed
        assert (name in report["codecs"]) != (name in report["unavailable"])


def test_megazip_row_is_a_real_round_trip(report, corpus, model_dir):
    rows = {f["path"]: f["codecs"]["megazip"] for f in report["files"]}
    for path, row in rows.items():
        data = (corpus / path).read_bytes()
        assert row["bytes"] == len(megazip.compress(data, str(model_dir)))
    salad = rows["salad.txt"]
    assert salad["segments"].get("model"), "the text should be coded by the model"
    assert salad["model_bytes"] > 0
    if salad["model_bits"] is not None:
        assert salad["model_bytes"] == pytest.approx(salad["model_bits"] / 8, rel=0.05, abs=16)
    from megazip import container

    text = (corpus / "salad.txt").read_bytes()
    h = container.scan(megazip.compress(text, str(model_dir), segment_size=len(text)))
    assert h.model_frames, "the text should be coded by the model"
    assert report["model"] == {
        "name": model_dir.name,
        "source": str(model_dir),
        "hash": report["model"]["hash"],
        "device": "cpu",
    }
    # the model's whole SHA-256, which the frame names by its first 8 bytes
    assert report["model"]["hash"][:16] == h.model_frames[0].model_hash.hex()
    assert len(report["model"]["hash"]) == 64


def test_json_schema_is_stable(report):
    doc = json.loads(benchmark.to_json(report))  # strict JSON: no NaN
    json.dumps(doc, allow_nan=False)
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == 1
    assert {"cpu", "cores", "os", "python", "torch", "device"} <= set(doc["machine"])
    assert set(doc["total"]) == {"files", "bytes", "codecs"}
    for entry in [*doc["files"], doc["total"]]:
        for name, row in entry["codecs"].items():
            assert set(row) == (MEGAZIP_KEYS if name == "megazip" else ROW_KEYS), name
    assert set(doc["files"][0]) == {"path", "bytes", "codecs"}


def test_totals_add_up(report):
    t = report["total"]
    assert t["files"] == 2 and t["bytes"] == sum(f["bytes"] for f in report["files"])
    for name, row in t["codecs"].items():
        rows = [f["codecs"][name] for f in report["files"]]
        assert row["bytes"] == sum(r["bytes"] for r in rows)
        assert row["bits_per_byte"] == pytest.approx(8 * row["bytes"] / t["bytes"])
        seconds = sum(r["compress_seconds"] for r in rows)
        assert row["compress_MBps"] == pytest.approx(t["bytes"] / 1e6 / seconds)


def test_markdown_and_csv_parse(report):
    md = benchmark.to_markdown(report, "megazip bench: corpus")
    tables = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len({ln.count("|") for ln in tables if "codec |" in ln}) == 1
    overview = md.split("## Bits per byte")[1].split("\n## ")[0]
    head = next(ln for ln in overview.splitlines() if ln.startswith("| file"))
    assert [c.strip() for c in head.strip("|").split("|")][2:] == list(report["codecs"])
    salad = next(ln for ln in overview.splitlines() if ln.startswith("| salad.txt"))
    cells = [c.strip() for c in salad.strip("|").split("|")]
    assert cells[1] == "2,000"
    for name, cell in zip(report["codecs"], cells[2:], strict=True):
        assert cell == f"{report['files'][0]['codecs'][name]['bits_per_byte']:.3f}"
    for name in report["codecs"]:
        assert any(ln.startswith(f"| {name} | ") for ln in tables)

    rows = list(csv.DictReader(io.StringIO(benchmark.to_csv(report))))
    assert len(rows) == 3 * len(report["codecs"])  # two files and the total
    assert {r["file"] for r in rows} == {"salad.txt", "table.bin", "TOTAL"}
    for r in rows:
        assert float(r["bits_per_byte"]) == pytest.approx(
            8 * int(r["bytes"]) / int(r["file_bytes"])
        )
        assert r["verified"] == "True"


def test_interrupt_keeps_the_rows_measured(corpus):
    seen = []

    def stop_after_first_file(path, codec, row):
        seen.append(path)
        if len(seen) == 2:  # both codecs of the first file done
            raise KeyboardInterrupt

    doc = benchmark.run([corpus], ["gzip-9", "xz-9e"], on_result=stop_after_first_file)
    assert doc["interrupted"] is True
    assert [f["path"] for f in doc["files"]] == ["salad.txt"]
    assert set(doc["files"][0]["codecs"]) == {"gzip-9", "xz-9e"}
    assert doc["total"]["files"] == 1 and doc["total"]["bytes"] == 2000
    assert "Interrupted" in benchmark.to_markdown(doc)


def test_cli_interrupt_writes_partial_json_and_exits_130(corpus, tmp_path, monkeypatch):
    real_run = benchmark.run

    def interrupted_run(paths, codecs, **kw):
        def stop(path, codec, row):
            kw["on_result"](path, codec, row)
            raise KeyboardInterrupt

        return real_run(paths, codecs, **{**kw, "on_result": stop})

    monkeypatch.setattr(benchmark, "run", interrupted_run)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["bench", str(corpus), "--codecs", "gzip-9", "--device", "cpu", "--out", str(out)]
    )
    assert result.exit_code == 130
    doc = json.loads((out / f"{corpus.name}.json").read_text())
    assert doc["interrupted"] is True and len(doc["files"]) == 1
    assert "Interrupted" in (out / f"{corpus.name}.md").read_text()


def test_ideal_scores_the_whole_file_under_the_integer_model(model_dir, tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(word_text(5, 600))
    doc = benchmark.run([path], ["megazip"], model=str(model_dir), ideal=True)
    row = doc["files"][0]["codecs"]["megazip"]
    prior, _ = int_code_lengths(checkpoint.load_int_model(str(model_dir)), path.read_bytes())
    assert row["ideal_bits"] == pytest.approx(prior)  # the integer model alone, one lane
    assert doc["total"]["codecs"]["megazip"]["ideal_bits"] == row["ideal_bits"]
    assert 0 < row["ideal_bits"] < 8 * 600  # the model has learned the word salad
    assert "whole file, one lane: ideal" in benchmark.to_markdown(doc)


def test_cli_json_and_plots(model_dir, tmp_path):
    mini = tmp_path / "mini"  # small: decoding with the model is slow on a CPU
    mini.mkdir()
    (mini / "a.txt").write_bytes(word_text(3, 600))
    (mini / "b.bin").write_bytes(bytes(range(256)) * 2)
    out = tmp_path / "results"
    args = ["bench", str(mini), "--codecs", "gzip-9,zstd-19,megazip", "--model", str(model_dir)]
    args += ["--device", "cpu", "--format", "json", "--out", str(out), "--plot", "-q"]
    p = subprocess.run(megazip_cmd(*args), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    doc = json.loads(p.stdout)
    assert set(doc) == TOP_KEYS and list(doc["codecs"]) == ["gzip-9", "zstd-19", "megazip"]
    assert [f["path"] for f in doc["files"]] == ["a.txt", "b.bin"]
    assert all(r["verified"] for f in doc["files"] for r in f["codecs"].values())
    assert json.loads((out / "mini.json").read_text()) == doc
    for png in ("mini.png", "mini_speed.png"):
        blob = (out / png).read_bytes()
        assert len(blob) > 1000 and blob[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_one_line_error(corpus, monkeypatch):
    runner = CliRunner()
    r = runner.invoke(cli, ["bench", str(corpus), "--codecs", "gzip-9,nope"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "unknown codec 'nope'" in r.output
    r = runner.invoke(cli, ["bench", str(corpus / "missing"), "--codecs", "gzip-9"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "missing" in r.output
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # not installed
    r = runner.invoke(cli, ["bench", str(corpus), "--codecs", "gzip-9", "--out", "x", "--plot"])
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "pip install 'megazip[plot]'" in r.output
