"""bench/stage.py and bench/prior_value.py: the stage-development harness replays the
encoder's tables exactly."""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import prior_value  # noqa: E402
import stage  # noqa: E402

from megazip import checkpoint, coder  # noqa: E402
from megazip.npmodel import NpMegabyte  # noqa: E402


def test_prior_value_replays_the_encoders_code_length(tmp_path, monkeypatch):
    """The stage's bits from cached priors equal coder.code_lengths' to the last bit,
    the prior alone likewise, and the results files are written."""
    monkeypatch.setattr(stage, "CACHE", tmp_path / "cache")
    data = (ROOT / "samples" / "sotu-1819-monroe.txt").read_bytes()[:5000]
    f = tmp_path / "doc.txt"
    f.write_bytes(data)
    doc = prior_value.main([str(f), "--out", str(tmp_path / "out")])
    (segments,), _ = stage.layout(data)
    model = NpMegabyte.load(checkpoint.int_model_path("tiny"))
    prior_bits, final_bits = coder.code_lengths(model, segments)
    row = doc["files"][0]
    assert row["bytes"] == len(data)
    assert np.isclose(row["stage_bits"], sum(final_bits), rtol=0, atol=1e-6)
    assert np.isclose(row["prior_bits"], sum(prior_bits), rtol=0, atol=1e-6)
    saved = json.loads((tmp_path / "out" / "prior_value.json").read_text())
    assert saved["files"][0]["stage"] == row["stage"]
    assert (tmp_path / "out" / "prior_value.md").read_text().startswith("# bench/prior_value")


def test_stage_alone_estimate_is_what_the_stage_frame_writes():
    """bench/stage.py --stage-frames: the stage alone's ideal length per stage piece
    (+ 5 bytes) is within 0.2 % + 2 bytes of the stage streams the writer codes."""
    from megazip import adaptive, container

    data = (ROOT / "samples" / "sotu-1819-monroe.txt").read_bytes()[:20000] * 2
    estimate, _ = stage.stage_alone_bytes(data)
    coded = sum(len(adaptive.encode_stage(p)) for p in container.stage_pieces(data))
    assert abs(coded - estimate) <= 0.002 * coded + 2, (coded, estimate)
