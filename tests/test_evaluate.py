"""Density evaluation: the streaming, batched scorer gives float_bits' numbers exactly;
datasets (folders, .jsonl, .tar, Parquet) become documents; reports total them."""

import csv
import gzip
import io
import json
import random
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import megazip_cmd

from megazip import evaluate
from megazip.datasets import Document, iter_documents
from megazip.evaluate import (
    CHUNK_PATCHES,
    LOCAL_PATCHES,
    NllSum,
    _local_pieces,
    float_bits,
    float_scores,
    format_csv,
    format_table,
    report,
    score_documents,
    segment_bounds,
)
from megazip.model import PRESETS, Megabyte

CFG = PRESETS["test"]  # P = 4: a chunk is 1024 bytes
CHUNK = CHUNK_PATCHES * CFG.patch_size


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Megabyte(CFG).eval()


def rand_bytes(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def text_bytes(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "slept", "\n"]
    out = b""
    while len(out) < n:
        out += rng.choice(words).encode() + b" "
    return out[:n]


def test_nll_sum_is_torch_cross_entropy_sum_bit_for_bit():
    rng = np.random.default_rng(0)
    for n in (1, 2, 15, 16, 17, 255, 256, 257, 4096, 4097, 70001):
        logp = torch.from_numpy(-rng.exponential(3.0, size=n).astype(np.float32))
        want = F.nll_loss(logp[:, None], torch.zeros(n, dtype=torch.long), reduction="sum")
        acc = NllSum(n)
        cuts = sorted({0, n, *rng.integers(0, n, size=4).tolist()})
        for a, b in zip(cuts, cuts[1:], strict=False):
            acc.add(logp[a:b].numpy())
        assert acc.total() == want.item(), n


def test_streaming_equals_one_shot_float_bits(model):
    lengths = [0, 1, 3, 5, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 77]
    docs = [rand_bytes(i, n) if i % 2 else text_bytes(i, n) for i, n in enumerate(lengths)]
    want = [float_bits(model, d) for d in docs]
    for batch in (1, 3, 16):
        got = dict(float_scores(model, docs, batch=batch))
        assert [got[i] for i in range(len(docs))] == want, batch


def test_batched_documents_score_as_one_at_a_time(model):
    # equal lengths share batches (full chunks, and final chunks of >= 16 patches)
    lengths = [3, 3, 64, 64, 64, 200, 200, CHUNK + 64, CHUNK + 64, 2 * CHUNK, 2 * CHUNK] * 2
    docs = [text_bytes(i, n) for i, n in enumerate(lengths)]
    want = [float_bits(model, d) for d in docs]
    for batch in (2, 8, 64):
        got = dict(float_scores(model, docs, batch=batch))
        assert [got[i] for i in range(len(docs))] == want, batch


@pytest.mark.parametrize("piece", [16, LOCAL_PATCHES])
def test_worker_threads_and_pieces_do_not_change_bits(model, piece, monkeypatch):
    # several chunks, final chunks of every size class, local passes of many pieces
    monkeypatch.setattr(evaluate, "LOCAL_PATCHES", piece)
    lengths = [1, 70, 64 * 4 * 3 + 5, CHUNK + 4 * 17, 2 * CHUNK + 4 * 99, 5 * CHUNK + 3, 900]
    docs = [text_bytes(i, n) for i, n in enumerate(lengths)]
    want = [float_bits(model, d) for d in docs]
    for threads, batch in ((0, 1), (1, 4), (2, 16), (3, 2)):
        got = dict(float_scores(model, docs, batch=batch, threads=threads))
        assert [got[i] for i in range(len(docs))] == want, (threads, batch)
    n = piece
    assert _local_pieces(0) == []
    assert _local_pieces(10) == [(0, 10)]
    assert _local_pieces(2 * n + 2) == [(0, n), (n, 2 * n + 2)]
    assert _local_pieces(3 * n) == [(0, n), (n, 2 * n), (2 * n, 3 * n)]


def test_bfloat16_batched_as_one_at_a_time_and_close_to_float32(model):
    lengths = [3, 64, 64, 200, CHUNK + 64, CHUNK + 64, 2 * CHUNK + 5, 999]
    docs = [text_bytes(i, n) for i, n in enumerate(lengths)]
    one = dict(float_scores(model, docs, batch=1, dtype="bfloat16", threads=0))
    for batch, threads in ((4, 2), (16, 1)):
        assert (
            dict(float_scores(model, docs, batch=batch, dtype="bfloat16", threads=threads)) == one
        )
    f32 = dict(float_scores(model, docs))
    assert one != f32
    assert abs(sum(one.values()) / sum(f32.values()) - 1) < 1e-3


def test_bfloat16_padding_and_key_bands_do_not_change_bits(model, monkeypatch):
    """bfloat16 on the CPU pads final chunks (CPU_BF16_BUCKET) and runs the global
    attention in query blocks against bands of keys: the bits are those without either."""
    from megazip import evaluate

    P = CFG.patch_size
    lengths = [3, 5 * P, 17 * P + 1, 40 * P, CHUNK + 16 * P, CHUNK + 23 * P + 2, 2 * CHUNK - P]
    lengths += [3 * CHUNK + 130 * P + 3, 999]
    docs = [text_bytes(i, n) for i, n in enumerate(lengths)]
    padded = dict(float_scores(model, docs, batch=4, dtype="bfloat16"))
    assert dict(float_scores(model, docs, batch=4, dtype="bfloat16", bucket=1)) == padded
    monkeypatch.setattr(evaluate, "QUERY_BLOCK", 1 << 30)  # one block, all keys
    assert dict(float_scores(model, docs, batch=1, dtype="bfloat16", bucket=1)) == padded


def test_lanes_split_documents_into_independent_streams(model):
    docs = [text_bytes(1, 3 * CHUNK + 5), text_bytes(2, 9), b""]
    for lanes in (2, 3):
        got = dict(float_scores(model, docs, batch=4, lanes=lanes))
        for i, d in enumerate(docs):
            bounds = segment_bounds(len(d), lanes, CFG.patch_size)
            assert b"".join(d[o : o + n] for o, n in bounds) == d
            assert got[i] == sum(float_bits(model, d[o : o + n]) for o, n in bounds)
    assert segment_bounds(10, 3, 4) == [(0, 4), (4, 4), (8, 2)]
    assert segment_bounds(10, 1, 4) == [(0, 10)]


def test_shipped_tiny_scores_canterbury_as_before(corpora):
    """Bits recorded with the one-shot scorer before streaming (`megazip eval --json`)."""
    from megazip import checkpoint

    model = checkpoint.load("tiny", "cpu")[0]
    doc = Document.from_bytes("xargs.1", (corpora / "canterbury" / "xargs.1").read_bytes())
    assert dict(float_scores(model, [doc])) == {0: 10472.413409026669}


def write_jsonl(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(text) if gz else text)


def test_jsonl_documents_fields_and_groups(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "héllo", "lang": "fr"}, {"text": "", "lang": 1}])
    (tmp_path / "a.jsonl").write_bytes((tmp_path / "a.jsonl").read_bytes() + b"\n  \n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_bytes(b"plain file")
    docs = list(iter_documents([tmp_path], group_by="lang"))
    got = [(d.name.replace(str(tmp_path), "T"), d.kind, d.size, d.read()) for d in docs]
    assert got == [
        ("T/a.jsonl:1", "fr", 6, "héllo".encode()),
        ("T/a.jsonl:2", "1", 0, b""),
        ("T/sub/c.txt", ".txt", 10, b"plain file"),
    ]
    assert [d.kind for d in iter_documents([tmp_path / "a.jsonl"])] == ["a.jsonl"] * 2
    write_jsonl(tmp_path / "b.jsonl.gz", [{"body": "x" * 5}], gz=True)
    with pytest.raises(ValueError, match=r"b\.jsonl\.gz:1: no field 'text'"):
        list(iter_documents([tmp_path / "b.jsonl.gz"]))
    with pytest.raises(ValueError, match=r"b\.jsonl\.gz:1: no field 'lang' to group by"):
        list(iter_documents([tmp_path / "b.jsonl.gz"], field="body", group_by="lang"))
    b = list(iter_documents([tmp_path / "b.jsonl.gz"], field="body"))
    assert [(d.kind, d.read()) for d in b] == [("b.jsonl.gz", b"xxxxx")]
    raw = list(iter_documents([tmp_path / "a.jsonl"], raw=True))
    assert [(d.kind, d.size) for d in raw] == [(".jsonl", (tmp_path / "a.jsonl").stat().st_size)]


def _dir_info(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_tar_members_in_order_plain_and_compressed(tmp_path):
    for name, mode in (("d.tar", "w"), ("e.tar.gz", "w:gz")):
        with tarfile.open(tmp_path / name, mode) as tar:
            for member, data in (("m/one.c", b"int x;" * 300), ("two", b"")):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            tar.addfile(_dir_info("m/d"))
    (tmp_path / "z.txt").write_bytes(b"zz")
    docs = list(iter_documents([tmp_path]))
    got = [(d.name.replace(str(tmp_path), "T"), d.kind, d.size, d.read()) for d in docs]
    assert got == [
        ("T/d.tar:m/one.c", ".c", 1800, b"int x;" * 300),
        ("T/d.tar:two", "(none)", 0, b""),
        ("T/e.tar.gz:m/one.c", ".c", 1800, b"int x;" * 300),
        ("T/e.tar.gz:two", "(none)", 0, b""),
        ("T/z.txt", ".txt", 2, b"zz"),
    ]
    with docs[0].open() as f:  # streamed from the plain archive, seekable
        f.seek(6)
        assert f.read(6) == b"int x;"
    (tmp_path / "bad.tar").write_bytes(b"not a tar archive at all" * 40)
    with pytest.raises(ValueError, match=r"bad\.tar: not a readable tar archive"):
        list(iter_documents([tmp_path / "bad.tar"]))


@pytest.mark.parametrize(
    "line, message",
    [
        (b"{not json", r"bad\.jsonl:2: not a JSON line"),
        (b"[1, 2]", r"bad\.jsonl:2: not a JSON object"),
        (b'{"other": 1}', r"bad\.jsonl:2: no field 'text'"),
        (b'{"text": 3}', r"bad\.jsonl:2: field 'text' is int, not a string"),
        (b'{"text": null}', r"bad\.jsonl:2: field 'text' is null, not a string"),
    ],
)
def test_bad_jsonl_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "ok"}\n' + line + b"\n")
    with pytest.raises(ValueError, match=message):
        list(iter_documents([tmp_path / "bad.jsonl"]))


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"text": ["alpha", "béta", ""], "src": ["web", "code", "web"]})
    pq.write_table(table, tmp_path / "t.parquet")
    docs = list(iter_documents([tmp_path / "t.parquet"], group_by="src"))
    got = [(d.name.replace(str(tmp_path), "T"), d.kind, d.read()) for d in docs]
    assert got == [
        ("T/t.parquet[0]", "web", b"alpha"),
        ("T/t.parquet[1]", "code", "béta".encode()),
        ("T/t.parquet[2]", "web", b""),
    ]
    with pytest.raises(ValueError, match=r"t\.parquet: no column 'body' \(columns: text, src\)"):
        list(iter_documents([tmp_path / "t.parquet"], field="body"))


def test_report_totals_kinds_and_formats(model):
    docs = [
        Document.from_bytes("a.txt", text_bytes(1, 700)),
        Document.from_bytes("b.bin", rand_bytes(2, 300)),
        Document.from_bytes("c.txt", text_bytes(3, 1500)),
    ]
    results = score_documents(enumerate(docs), float_model=model, batch=2)
    bits = [float_bits(model, d.read()) for d in docs]
    assert [r.bits["float"] for r in results] == bits
    doc = report(results, "test", {"lanes": 1})
    assert doc["total"] == {
        "documents": 3,
        "bytes": 2500,
        "float": {"bits": sum(bits), "bits_per_byte": sum(bits) / 2500},
    }
    assert doc["kinds"][".txt"]["float"]["bits"] == bits[0] + bits[2]
    assert doc["kinds"][".bin"]["bytes"] == 300
    assert [f["path"] for f in doc["files"]] == ["a.txt", "b.bin", "c.txt"]
    table = format_table(doc).splitlines()
    assert table[-1].split()[:2] == ["total", "2,500"]
    assert f"{sum(bits) / 2500:.3f}" in table[-1]
    assert any(line.startswith("kind .txt") for line in table)
    rows = list(csv.DictReader(io.StringIO(format_csv(doc))))
    assert [r["scope"] for r in rows] == ["document"] * 3 + ["kind", "kind", "total"]
    assert float(rows[-1]["float_bits"]) == sum(bits)
    assert "lanes: 2" in format_table(report(results, "test", {"lanes": 2}))


def test_integer_columns_are_int_code_lengths(model):
    from megazip.evaluate import int_code_lengths
    from megazip.export import export

    int_model = export(model, torch.randint(0, 256, (2, 64), generator=torch.Generator()))
    docs = [Document.from_bytes("a", text_bytes(1, 300)), Document.from_bytes("b", b"")]
    for float_model in (model, None):
        results = score_documents(enumerate(docs), float_model, int_model, batch=2)
        for r, d in zip(results, docs, strict=True):
            prior, final = int_code_lengths(int_model, d.read()) if d.size else (0.0, 0.0)
            assert (r.bits["int"], r.bits["adaptive"]) == (prior, final)
            assert ("float" in r.bits) == (float_model is not None)


def test_integer_columns_of_long_documents_are_cut_into_int_segments(model, monkeypatch):
    from megazip import evaluate
    from megazip.evaluate import int_code_lengths, int_segments
    from megazip.export import export

    int_model = export(model, torch.randint(0, 256, (2, 64), generator=torch.Generator()))
    monkeypatch.setattr(evaluate, "INT_SEGMENT", 256)
    assert int_segments(600, 1, 4) == [(0, 256), (256, 256), (512, 88)]
    assert int_segments(600, 2, 4) == [(0, 256), (256, 44), (300, 256), (556, 44)]
    assert int_segments(0, 1, 4) == [(0, 0)]
    data = text_bytes(3, 600)
    [r] = score_documents([(0, Document.from_bytes("a", data))], None, int_model)
    parts = [int_code_lengths(int_model, data[o : o + n]) for o, n in int_segments(600, 1, 4)]
    assert r.bits["int"] == sum(p for p, _ in parts)
    assert r.bits["adaptive"] == sum(f for _, f in parts)
    doc = report([r], "test", {"lanes": 1, "int_segment": 256})
    assert "scored in segments of that size" in format_table(doc)


# ------------------------------------------------------------------ the eval command


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, model):
    from megazip import checkpoint

    root = tmp_path_factory.mktemp("eval")
    checkpoint.save(root / "ck", model)
    data = root / "data"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.txt").write_bytes(text_bytes(i, 400 * i + 9))
    (data / "g.bin").write_bytes(rand_bytes(9, 1300))
    write_jsonl(data / "r.jsonl", [{"text": "hello " * i, "src": "ab"[i % 2]} for i in range(5)])
    return root


def eval_json(args: list[str], torchrun: int = 0) -> dict:

    if torchrun:
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*run, f"--nproc_per_node={torchrun}", "-m", "megazip", "eval", *args]
    else:
        cmd = megazip_cmd("eval", *args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.slow
def test_eval_under_torchrun_gloo_equals_single_process(dataset):
    args = [str(dataset / "data"), "-m", str(dataset / "ck"), "--json", "--group-by", "src"]
    single = eval_json(args)
    assert single["total"]["documents"] == 9
    assert sorted(single["kinds"]) == [".bin", ".txt", "a", "b"]
    assert eval_json(args, torchrun=2) == single  # every number, totals included


@pytest.mark.slow
def test_eval_formats_lanes_and_plot(dataset, tmp_path):

    base = [str(dataset / "data"), "-m", str(dataset / "ck")]
    one = eval_json([*base, "--json"])
    assert one["lanes"] == 1
    plot = tmp_path / "h.png"
    r = subprocess.run(
        megazip_cmd("eval", *base, "--lanes", "2", "--summary", "--plot", str(plot)),
        capture_output=True,
        text=True,
        check=True,
    )
    lines = r.stdout.splitlines()
    assert lines[0].startswith("note: lanes: 2") and lines[-1].startswith("total")
    assert len(lines) == 2 + 3 + 1  # note, header, kinds .bin .txt r.jsonl, total
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = subprocess.run(
        megazip_cmd("eval", *base, "--csv", "--lanes", "2", "--batch", "3"),
        capture_output=True,
        text=True,
        check=True,
    )
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [r["scope"] for r in rows].count("document") == 9
    assert int(rows[-1]["bytes"]) == one["total"]["bytes"]
    assert float(rows[-1]["float_bits"]) != one["total"]["float"]["bits"]  # less context


def test_eval_bad_jsonl_line_is_one_line_error(dataset, tmp_path):

    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    r = subprocess.run(
        megazip_cmd("eval", str(tmp_path / "bad.jsonl"), "-m", str(dataset / "ck")),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "bad.jsonl:2: not a JSON line" in r.stderr
