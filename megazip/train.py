"""Training a MEGABYTE on bytes: AdamW, linear warm-up then cosine decay, gradient
clipping, bf16 autocast on CUDA (float32 on CPU), periodic validation in bits per byte,
checkpoints (safetensors + JSON) that can be resumed.

Runs unchanged under `torchrun --nproc_per_node=N`: each process draws its own random
windows, gradients are averaged by DistributedDataParallel (gloo on CPU, nccl on CUDA),
and only rank 0 validates, prints and writes checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import checkpoint
from .data import ByteWindows, list_files, read_bytes, split_files
from .export import export, save_int_model
from .model import PRESETS, Megabyte

LN2 = math.log(2)
STATE_FILE = "train_state.pt"
CALIBRATION_SEED = 4321  # the training windows that calibrate the integer model


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)  # files or folders of training bytes
    valid: list[str] = field(default_factory=list)  # held-out files; default: split by file
    out: str = "runs/megazip"
    model: str = "tiny"  # preset name
    steps: int = 2000
    batch_size: int = 8  # windows per step per process
    seq_len: int = 0  # bytes per window; 0 = the model's context (W * P)
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_windows: int = 32
    save_every: int = 500
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    threads: int = 0  # CPU threads for torch (0: torch's default)
    stop_at: int = 0  # stop (with a checkpoint) at this step, to resume later; 0 = run to the end
    time_limit: float = 0.0  # seconds of training; the schedule then ends at whichever of
    # `steps` and `time_limit` comes first (0 = no limit)
    progress: bool = True


# Training recipes: everything that makes a shipped model, as code. The corpus is built by
# `make corpus` (bench/corpus.py) into data/corpus. A recipe with a time limit ends its
# cosine schedule at that limit (or at `steps`, if reached first): the model card records
# the steps it reached, and `--steps N --time-limit 0` replays the same schedule anywhere.
RECIPES: dict[str, dict] = {
    # a 2-core CPU, about an hour
    "tiny": dict(
        model="tiny",
        data=["data/corpus/train"],
        valid=["data/corpus/valid"],
        steps=3000,
        batch_size=8,
        seq_len=1024,
        lr=2e-3,
        min_lr=2e-4,
        warmup=200,
        eval_every=250,
        save_every=250,
    ),
    # the tiny model on one data-centre GPU in 5.5 minutes (bf16 autocast)
    "tiny-gpu": dict(
        model="tiny",
        data=["data/corpus/train"],
        valid=["data/corpus/valid"],
        steps=200_000,
        time_limit=330,
        batch_size=128,
        seq_len=1024,
        lr=3e-3,
        min_lr=1e-4,
        warmup=300,
        eval_every=1000,
        save_every=2000,
    ),
    # one data-centre GPU in 5.5 minutes (bf16 autocast)
    "small": dict(
        model="small",
        data=["data/corpus/train"],
        valid=["data/corpus/valid"],
        steps=100_000,
        time_limit=330,
        batch_size=96,
        seq_len=2048,
        lr=1.5e-3,
        min_lr=1e-4,
        warmup=300,
        eval_every=500,
        save_every=1000,
    ),
}


def recipe(name: str, **overrides) -> TrainConfig:
    """The TrainConfig of a named recipe, with `overrides` applied (e.g. out=...)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return TrainConfig(**{**RECIPES[name], **overrides})


def schedule_progress(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """How far the cosine part of the schedule is, in [0, 1]: by steps after warm-up, or
    by elapsed training seconds against cfg.time_limit, whichever is further."""
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.time_limit > 0:
        t = max(t, elapsed / cfg.time_limit)
    return min(1.0, max(0.0, t))


def learning_rate(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warm-up over cfg.warmup steps, then cosine from cfg.lr to cfg.min_lr over
    schedule_progress."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = schedule_progress(step, elapsed, cfg)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * t)) * (cfg.lr - cfg.min_lr)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA GPU is available")
    return torch.device(name)


@torch.no_grad()
def validation_bpb(model: Megabyte, windows: torch.Tensor, device, batch: int = 8) -> float:
    """Mean bits per byte of the model over fixed validation windows (teacher forcing)."""
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        x = windows[i : i + batch].to(device)
        with autocast(device):
            _, loss = model(x, x)
        total += loss.item() * len(x)
    model.train()
    return total / len(windows) / LN2


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _load_splits(cfg: TrainConfig, seq_len: int) -> tuple[ByteWindows, ByteWindows]:
    files = list_files(cfg.data)
    if cfg.valid:
        train_files, valid_files = files, list_files(cfg.valid)
    else:
        train_files, valid_files = split_files(files)
    train = read_bytes(train_files)
    if valid_files:
        valid = read_bytes(valid_files)
    else:  # a single file: hold out its last tenth
        cut = len(train) - max(len(train) // 10, 1)
        train, valid = train[:cut], train[cut:]
    return ByteWindows(train, seq_len), ByteWindows(valid, seq_len)


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) into cfg.out; every checkpoint also gets its integer coding
    model (int_model.safetensors). Returns a summary dict: step, train_bpb, valid_bpb,
    wall_s, world_size. An unknown preset (cfg.model not in PRESETS) raises ValueError
    before anything is set up or written."""
    if cfg.model not in PRESETS:  # before any set-up: nothing to undo
        raise ValueError(f"unknown model preset: {cfg.model} (known: {', '.join(PRESETS)})")
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = 0, 1
    device = pick_device(cfg.device)
    if distributed:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    master = rank == 0
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    meta: dict = {}
    if cfg.resume and (out / checkpoint.CONFIG_FILE).is_file():
        model, meta = checkpoint.load(out, device)
        model.train()
    else:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and run
        model = Megabyte(PRESETS[cfg.model])
        model.to(device)
    mcfg = model.config
    seq_len = cfg.seq_len or mcfg.context_bytes
    seq_len -= seq_len % mcfg.patch_size
    train_windows, valid_windows = _load_splits(cfg, seq_len)
    valid_set = valid_windows.fixed(cfg.eval_windows)
    calibration_set = train_windows.fixed(cfg.eval_windows, seed=CALIBRATION_SEED)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    step = 0
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    state_path = out / STATE_FILE
    if cfg.resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        gen.set_state(
            state["generator"][rank] if rank < len(state["generator"]) else gen.get_state()
        )
    history = meta.get("history", [])
    wall0 = meta.get("wall_s", 0.0)

    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    def save_checkpoint(valid_bpb: float | None):
        if not master:
            return
        gens = [gen.get_state()]
        if distributed:
            gens = [None] * world
            dist.gather_object(gen.get_state(), gens)
        checkpoint.save(
            out,
            model,
            {
                "step": step,
                "valid_bpb": valid_bpb,
                "history": history,
                "train": {k: v for k, v in asdict(cfg).items() if k != "progress"},
                "world_size": world,
                "device": str(device.type),
                "wall_s": wall0 + time.time() - t0,
            },
        )
        int_model = export(model, calibration_set)
        save_int_model(int_model, out / checkpoint.INT_MODEL_FILE)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"optimizer": opt.state_dict(), "step": step, "generator": gens}, tmp)
        tmp.replace(state_path)

    def gather_generators():
        if distributed and not master:
            dist.gather_object(gen.get_state(), None)

    t0 = time.time()

    def synced_elapsed() -> float:
        """Training seconds so far (earlier runs of a resumed one included); under DDP
        rank 0's clock, so that every rank uses the same learning rate and stops together."""
        e = wall0 + time.time() - t0
        if distributed and cfg.time_limit > 0:
            t = torch.tensor([e], dtype=torch.float64, device=device)
            dist.broadcast(t, 0)
            e = t.item()
        return e

    bar = tqdm(
        total=cfg.steps,
        initial=step,
        disable=not (master and cfg.progress),
        unit="step",
        dynamic_ncols=True,
    )
    model.train()
    train_bpb = float("nan")
    valid_bpb = meta.get("valid_bpb")
    bytes_seen, t_last = 0, time.time()
    last = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    elapsed = synced_elapsed()
    while step < last:
        lr = learning_rate(step, cfg, elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        x = train_windows.sample(cfg.batch_size, gen).to(device, non_blocking=True)
        with autocast(device):
            _, loss = net(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        bytes_seen += x.numel() * world
        train_bpb = loss.item() / LN2
        elapsed = synced_elapsed()
        final = step == last or (cfg.time_limit > 0 and elapsed >= cfg.time_limit)
        if (step % cfg.eval_every == 0 or final) and master:
            valid_bpb = validation_bpb(model, valid_set, device)
            history.append({"step": step, "train_bpb": train_bpb, "valid_bpb": valid_bpb})
        if step % cfg.save_every == 0 or final:
            if master:
                save_checkpoint(valid_bpb)
            else:
                gather_generators()
        dt = time.time() - t_last
        if master:
            bar.update(1)
            bar.set_postfix(
                bpb=f"{train_bpb:.3f}",
                val=f"{valid_bpb:.3f}" if valid_bpb is not None else "-",
                kBps=f"{bytes_seen / max(dt, 1e-9) / 1e3:.1f}",
                lr=f"{lr:.1e}",
            )
        if dt > 5:
            bytes_seen, t_last = 0, time.time()
        if final:
            break
    bar.close()
    wall = time.time() - t0
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {
        "step": step,
        "train_bpb": train_bpb,
        "valid_bpb": valid_bpb,
        "wall_s": wall,
        "world_size": world,
    }


def export_checkpoint(folder: str | Path) -> Path:
    """(Re-)export the integer coding model of a checkpoint folder from its float weights,
    calibrated on the same training windows as during training (its recorded config).
    Returns the path of the integer model file written."""
    folder = Path(folder)
    model, meta = checkpoint.load(folder)
    cfg = TrainConfig(**{**meta["train"], "progress": False})
    seq_len = cfg.seq_len or model.config.context_bytes
    seq_len -= seq_len % model.config.patch_size
    train_windows, _ = _load_splits(cfg, seq_len)
    with torch.no_grad():
        int_model = export(model, train_windows.fixed(cfg.eval_windows, seed=CALIBRATION_SEED))
    return save_int_model(int_model, folder / checkpoint.INT_MODEL_FILE)
