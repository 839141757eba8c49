"""The frozen format: tests/golden/ holds .mgz files of every kind made with the shipped
`tiny` model (tests/golden/make.py). Every build must decode each to the original whose
SHA-256 MANIFEST.json records, and compressing the same input with the same options must
give the same bytes (the encoder is deterministic), so a format change cannot slip
through: it has to change the format version and regenerate the files."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zlib

import pytest
from conftest import ROOT

from megazip import container

GOLDEN = ROOT / "tests" / "golden"
MANIFEST = json.loads((GOLDEN / "MANIFEST.json").read_text())
pytestmark = pytest.mark.usefixtures("one_thread")


def _make():
    spec = importlib.util.spec_from_file_location("golden_make", GOLDEN / "make.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make = _make()


def test_every_kind_is_there():
    assert set(MANIFEST) == set(make.KINDS)
    frames = {name: e["frames"] for name, e in MANIFEST.items()}
    methods = "".join(f["methods"] for fs in frames.values() for f in fs)
    assert set(methods) == {"S", "Z", "M", "A"}  # stored, zstd, model, stage
    assert frames["empty"] == [{"methods": "", "stage": 0}]
    assert frames["model-plain"][0]["stage"] == 0 and "M" in frames["model-plain"][0]["methods"]
    assert frames["model-record"][0]["records"][0] > 0, "no record length signalled"
    assert 0 in [r for fs in frames.values() for f in fs for r in f.get("records", [])]
    assert len(frames["frames"]) > 1 and len(frames["blocks"][0]["records"]) > 1


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_file_decodes_byte_for_byte(name):
    blob = (GOLDEN / f"{name}.mgz").read_bytes()
    entry = MANIFEST[name]
    assert hashlib.sha256(blob).hexdigest() == entry["mgz_sha256"], "the golden file changed"
    out = container.decompress(blob, make.MODEL)
    assert len(out) == entry["bytes"]
    assert hashlib.sha256(out).hexdigest() == entry["sha256"]
    frames = container.scan(blob).frames
    assert [f.index for f in frames] == list(range(len(frames))) and frames[-1].last
    at = 0
    for f in frames:
        assert f.crc == (zlib.crc32(out[at : at + f.length]) if f.length else 0)
        at += f.length


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_compressing_the_same_input_gives_the_same_bytes(name):
    data, blob = make.make(name)
    assert hashlib.sha256(data).hexdigest() == MANIFEST[name]["sha256"]
    assert MANIFEST[name]["options"] == make.KINDS[name][1]
    assert blob == (GOLDEN / f"{name}.mgz").read_bytes()


def test_a_file_of_format_1_is_refused_naming_the_release_that_reads_it():
    old = b"\x89MGZ\x01\x08\x04tiny" + bytes(100)
    with pytest.raises(container.FormatError, match=r"format version 1 .*megazip 0\.1\.0"):
        container.decompress(old)
