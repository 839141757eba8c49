"""Shipped models: present, loadable, hashes matching their cards, usable for coding."""

import json
import re
import subprocess

import pytest
from conftest import megazip_cmd

import megazip
from megazip import checkpoint, container

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
    assert container.read_header(blob).model_name == name
    # with no model named, decompression finds the shipped model from the header
    assert megazip.decompress(blob, None) == data


def test_models_command_lists_every_shipped_model():
    out = subprocess.run(megazip_cmd("models"), capture_output=True, text=True, check=True)
    for name in NAMES:
        assert re.search(rf"^{name}\s", out.stdout, re.M)
    assert "(default)" in out.stdout


@pytest.mark.parametrize("name", NAMES)
def test_card_reports_float_and_integer_validation_within_3_percent(name):
    meta = json.loads((checkpoint.shipped_models_dir() / f"{name}.json").read_text())
    assert meta["valid_bpb_int"] <= meta["valid_bpb_float"] * 1.03
