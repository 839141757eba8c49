"""Training, checkpoints, resume, torchrun, and evaluation from the command line."""

import json
import subprocess

import pytest
import torch
from conftest import ROOT, megazip_cmd
from safetensors.torch import load_file

from megazip import checkpoint
from megazip.evaluate import evaluate, float_bits
from megazip.model import PRESETS, Megabyte
from megazip.train import TrainConfig, learning_rate, train


def make_data(tmp_path):
    d = tmp_path / "data"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        (d / f"f{i}.txt").write_bytes(b"abcabd" * 50 + bytes([i]) * 30)
    return d


def small_cfg(tmp_path, **kw):
    base = dict(
        data=[str(make_data(tmp_path))],
        out=str(tmp_path / "run"),
        model="test",
        steps=20,
        batch_size=4,
        seq_len=64,
        warmup=3,
        eval_every=5,
        save_every=100,
        eval_windows=4,
        progress=False,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_save_then_load_gives_identical_outputs(tmp_path):
    m = Megabyte(PRESETS["test"]).eval()
    checkpoint.save(tmp_path / "ck", m, {"note": "x"})
    m2, meta = checkpoint.load(tmp_path / "ck")
    x = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        assert torch.equal(m(x)[0], m2(x)[0])
    assert meta["note"] == "x" and meta["config"] == m.config.to_dict()


def test_an_unknown_preset_is_refused_before_anything_is_written(tmp_path):
    cfg = small_cfg(tmp_path, model="no-such-preset")
    with pytest.raises(ValueError, match="unknown model preset: no-such-preset"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_resume_continues_step_count_and_schedule_exactly(tmp_path):
    torch.set_num_threads(1)
    full = train(small_cfg(tmp_path / "a"))
    assert full["step"] == 20
    cfg = small_cfg(tmp_path / "b", stop_at=10)
    assert train(cfg)["step"] == 10
    assert json.loads((tmp_path / "b/run/config.json").read_text())["step"] == 10
    resumed = train(small_cfg(tmp_path / "b", resume=True))
    assert resumed["step"] == 20
    a = load_file(str(tmp_path / "a/run/model.safetensors"))
    b = load_file(str(tmp_path / "b/run/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from uninterrupted"
    steps = [h["step"] for h in json.loads((tmp_path / "b/run/config.json").read_text())["history"]]
    assert steps == [5, 10, 15, 20]


def test_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-4)
    lrs = [learning_rate(s, cfg) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert abs(learning_rate(100, cfg) - 1e-4) < 1e-12


def test_time_limit_ends_the_schedule_early_with_a_final_checkpoint(tmp_path):
    cfg = TrainConfig(steps=1000, warmup=10, lr=1e-3, min_lr=1e-4, time_limit=60.0)
    assert learning_rate(20, cfg, elapsed=0.0) > learning_rate(20, cfg, elapsed=30.0)
    assert abs(learning_rate(20, cfg, elapsed=60.0) - 1e-4) < 1e-12
    assert learning_rate(5, cfg, elapsed=59.0) < 1e-3  # warm-up is by steps
    summary = train(small_cfg(tmp_path, steps=100_000, time_limit=3.0, save_every=100_000))
    assert 0 < summary["step"] < 100_000
    meta = json.loads((tmp_path / "run/config.json").read_text())
    assert meta["step"] == summary["step"] and meta["wall_s"] >= 3.0
    assert meta["history"][-1]["step"] == summary["step"]
    assert (tmp_path / "run" / checkpoint.INT_MODEL_FILE).is_file()


def test_export_command_rebuilds_the_int_model_training_wrote(tmp_path):
    train(small_cfg(tmp_path, steps=6))
    run = tmp_path / "run"
    written = checkpoint.load_int_model(run).content_hash()
    (run / checkpoint.INT_MODEL_FILE).unlink()
    out = subprocess.run(megazip_cmd("export", str(run)), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert checkpoint.load_int_model(run).content_hash() == written
    assert written in out.stdout
    bad = subprocess.run(megazip_cmd("export", str(tmp_path)), capture_output=True, text=True)
    assert bad.returncode == 1 and "not a checkpoint folder" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_torchrun_two_cpu_processes_write_one_checkpoint(tmp_path):
    data = make_data(tmp_path)
    out = tmp_path / "ddp"
    cmd = [
        str(ROOT / ".venv/bin/torchrun") if (ROOT / ".venv/bin/torchrun").exists() else "torchrun",
        "--nproc_per_node=2",
        "--standalone",  # a free port of its own: a fixed one can be taken
        "--no_python",
        *megazip_cmd(
            "train",
            "--data",
            str(data),
            "--config",
            "test",
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--seq-len",
            "32",
            "--eval-every",
            "2",
            "--out",
            str(out),
            "--device",
            "cpu",
            "-q",
        ),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((out / "config.json").read_text())
    assert meta["step"] == 4 and meta["world_size"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "int_model.safetensors",
        "model.safetensors",
        "train_state.pt",
    ]


def test_eval_cli_matches_python_function(tmp_path):
    m = Megabyte(PRESETS["test"]).eval()
    checkpoint.save(tmp_path / "ck", m)
    f = tmp_path / "sample.bin"
    f.write_bytes(bytes(range(256)) * 3 + b"tail")
    r = subprocess.run(
        megazip_cmd("eval", str(f), "--model", str(tmp_path / "ck"), "--json"),
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(r.stdout)
    scores, total = evaluate(m, [f])
    assert got["files"][0]["bytes"] == len(f.read_bytes())
    assert abs(got["total"]["float"]["bits"] - total.bits) < 1e-6 * total.bits
    assert abs(got["total"]["float"]["bits"] - float_bits(m, f.read_bytes())) < 1e-6 * total.bits
    table = subprocess.run(
        megazip_cmd("eval", str(f), "--model", str(tmp_path / "ck")),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{total.bits_per_byte:.3f}" in table.splitlines()[-1]


def test_eval_of_missing_file_is_one_line_error(tmp_path):
    m = Megabyte(PRESETS["test"])
    checkpoint.save(tmp_path / "ck", m)
    r = subprocess.run(
        megazip_cmd("eval", str(tmp_path / "nope"), "--model", str(tmp_path / "ck")),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_list_files_skips_hidden_and_pycache_folders(tmp_path):
    from megazip.data import list_files

    (tmp_path / "a.py").write_bytes(b"x")
    for d in ("__pycache__", ".git", "sub"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f.bin").write_bytes(b"y")
    assert [p.relative_to(tmp_path).as_posix() for p in list_files([tmp_path])] == [
        "a.py",
        "sub/f.bin",
    ]
