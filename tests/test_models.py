"""Shipped models: present, loadable, hashes matching their cards, usable for coding."""

import re
import subprocess

import pytest
from conftest import ROOT, megazip_cmd

import megazip
from megazip import checkpoint, container
from megazip.evaluate import float_bits, int_code_lengths

NAMES = checkpoint.shipped_model_names()


def test_the_default_model_is_shipped():
    assert checkpoint.DEFAULT_MODEL in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_hash_matches_its_card_and_metadata(name):
    int_model = checkpoint.load_int_model(name)
    card = (checkpoint.shipped_models_dir() / f"{name}.md").read_text()
    hashes = re.findall(r"content hash `([0-9a-f]{64})`", card)
    assert hashes == [int_model.content_hash()]
    assert checkpoint.read_meta(name)["int_model_hash"] == int_model.content_hash()


@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_loads_and_round_trips(name):
    meta = checkpoint.read_meta(name)
    if checkpoint.has_float_weights(name):
        model, _ = checkpoint.load(name)
        assert model.num_params() == meta["params"]
    else:  # shipped as its integer coding model only
        with pytest.raises(checkpoint.ModelNotFound, match="no float weights"):
            checkpoint.load(name)
    data = b"The quick brown fox jumps over the lazy dog.\n" * 20 + bytes(range(256))
    stats = {}
    blob = megazip.compress(data, name, stats=stats)
    assert megazip.decompress(blob) == data
    assert [f.model_name for f in container.scan(blob).model_frames] == [name]
    # with no model named, decompression finds the shipped model from the header
    assert megazip.decompress(blob, None) == data


def test_models_command_lists_every_shipped_model():
    out = subprocess.run(megazip_cmd("models"), capture_output=True, text=True, check=True)
    for name in NAMES:
        assert re.search(rf"^{name}\s", out.stdout, re.M)
    assert "(default)" in out.stdout


@pytest.mark.parametrize("name", NAMES)
def test_integer_model_codes_within_3_percent_of_the_float_model(name):
    """What the card reports on the validation split, measured here on a sample it never
    trained on (8 KiB of the bundled speech): integer bits within 3 % of float bits."""
    if not checkpoint.has_float_weights(name):
        pytest.skip(f"{name} ships without float weights")
    data = (ROOT / "samples" / "sotu-1819-monroe.txt").read_bytes()[:8192]
    model, _ = checkpoint.load(name)
    fb = float_bits(model, data)
    ib = int_code_lengths(checkpoint.load_int_model(name), data)[0]
    assert fb / len(data) < 4.0, f"the float model codes text at {fb / len(data):.3f} bits/byte"
    assert abs(ib - fb) <= 0.03 * fb, f"int {ib / len(data):.4f} vs float {fb / len(data):.4f}"
