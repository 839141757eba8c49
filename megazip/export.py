"""Export: a float MEGABYTE checkpoint -> the integer coding model (megazip/intmodel.py).

Calibration runs the float model over sample windows and records, at every point where
the integer model quantizes, the largest magnitude seen (per channel after each norm and
before the attention output projection, per tensor elsewhere). From those ranges it picks
int8 scales, folds norm gains and per-channel activation scales into the weights, turns
every scale ratio into an integer multiplier and shift, and tabulates exp and GELU. The
result holds integers only; this is the one place floating point decides anything, and
it runs once.

The integer model is saved as one safetensors file whose metadata holds the config and
the scalar integers; its content hash (IntMegabyte.content_hash) names it in .mgz files.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .intmodel import ATTN_UNIT, OUT_EXP_BITS, OUT_UNIT, IntMegabyte
from .kernels import PROB_BITS
from .model import Block, Megabyte, MegabyteConfig, RMSNorm, alibi_slopes

RESIDUAL_BITS = 20  # the largest calibrated residual value maps to 2^20
GELU_LIMIT = 2047  # GELU table covers indices -2047..2047


# ------------------------------------------------------------------------- calibration


class RangeRecorder:
    """Largest |value| seen at named points, per channel (last dim) or per tensor."""

    def __init__(self):
        self.ranges: dict[str, torch.Tensor] = {}

    def add(self, name: str, x: torch.Tensor, per_channel: bool):
        x = x.detach().double().abs()
        m = x.reshape(-1, x.shape[-1]).amax(0) if per_channel else x.amax()
        self.ranges[name] = torch.maximum(self.ranges[name], m) if name in self.ranges else m


def _normalized(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """x / rms(x): the norm's output before its gain (the gain is folded into weights)."""
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)


@torch.no_grad()
def calibrate(model: Megabyte, windows: torch.Tensor, batch: int = 8) -> dict[str, torch.Tensor]:
    """Ranges of every quantization point of `model` over `windows` (N, T) bytes."""
    rec = RangeRecorder()
    hooks = []

    def on(module, fn):
        hooks.append(module.register_forward_hook(fn))

    def watch_block(prefix: str, block: Block):
        D = block.attn.proj.in_features
        on(block.norm1, lambda m, i, o: rec.add(f"{prefix}.norm1", _normalized(m, i[0]), True))
        on(block.norm2, lambda m, i, o: rec.add(f"{prefix}.norm2", _normalized(m, i[0]), True))

        def qkv(m, i, o):
            q, k, v = o.split(D, dim=-1)
            rec.add(f"{prefix}.q", q, False)
            rec.add(f"{prefix}.k", k, False)
            rec.add(f"{prefix}.v", v, False)

        on(block.attn.qkv, qkv)
        on(block.attn.proj, lambda m, i, o: rec.add(f"{prefix}.attn_out", i[0], True))
        on(block.mlp.fc, lambda m, i, o: rec.add(f"{prefix}.fc", o, False))
        on(block.mlp.proj, lambda m, i, o: rec.add(f"{prefix}.gelu", i[0], False))
        stream = prefix.split(".")[0]
        on(block, lambda m, i, o: rec.add(f"{stream}.residual", o, False))
        hooks.append(
            block.register_forward_pre_hook(lambda m, i: rec.add(f"{stream}.residual", i[0], False))
        )

    for i, b in enumerate(model.global_blocks):
        watch_block(f"global.{i}", b)
    for i, b in enumerate(model.local_blocks):
        watch_block(f"local.{i}", b)
    on(model.global_norm, lambda m, i, o: rec.add("global_norm", _normalized(m, i[0]), True))
    on(model.local_norm, lambda m, i, o: rec.add("local_norm", _normalized(m, i[0]), True))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    for s in range(0, len(windows), batch):
        model(windows[s : s + batch].to(dev))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return rec.ranges


# -------------------------------------------------------------------------- conversion


def multiplier(ratio: torch.Tensor | float) -> tuple[torch.Tensor, int]:
    """Integer multipliers and one shift with mult / 2^shift ~= ratio, mult < 2^30."""
    r = torch.as_tensor(ratio, dtype=torch.float64)
    top = max(r.abs().max().item(), 1e-30)
    shift = int(min(62, max(1, math.floor(29 - math.log2(top)))))
    return torch.round(r * 2.0**shift).to(torch.int64), shift


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights, per-row scales) with w ~= q * scale[:, None]."""
    scale = w.abs().amax(-1).clamp(min=1e-12) / 127
    return torch.round(w / scale[..., None]).clamp(-127, 127).to(torch.int8), scale


def exp_table(unit: int, bits: int) -> torch.Tensor:
    """round(2^bits * exp(-i / unit)) for i = 0.. until it rounds to 0 (last entry 0)."""
    n = math.ceil(unit * (bits + 1) * math.log(2)) + 2
    e = torch.round(2.0**bits * torch.exp(-torch.arange(n, dtype=torch.float64) / unit))
    return e.to(torch.int64)


class _Exporter:
    def __init__(self, model: Megabyte, ranges: dict[str, torch.Tensor]):
        self.m = model
        self.r = ranges
        self.t: dict[str, torch.Tensor] = {}
        self.ints: dict[str, int] = {}
        self.res = {
            s: max(ranges[f"{s}.residual"].item(), 1e-6) / 2**RESIDUAL_BITS
            for s in ("global", "local")
        }

    def norm(self, name: str, residual_scale: float) -> torch.Tensor:
        """Integer norm constants; returns the effective per-channel output scale."""
        # floor the scale so that c <= 2^30: then 2 * x * c < 2^57 for |x| <= 2^26
        s = self.r[name].clamp(min=127 * 2.0**-14) / 127
        c = torch.round(2.0**16 / s).to(torch.int64)
        self.t[f"{name}.c"] = c
        self.ints[f"{name}.eps"] = max(1, round(1e-6 / residual_scale**2))
        return 2.0**16 / c.double()

    def linear(self, name: str, w: torch.Tensor, in_scale, out_scale) -> None:
        """w (N, K) float weights applied to int8 inputs of scale in_scale (scalar or per
        input channel), outputs requantized to out_scale (scalar or per output)."""
        q, s = quantize_rows(w.double() * in_scale)
        mult, shift = multiplier(s / out_scale)
        self.t[f"{name}.w"], self.t[f"{name}.mult"] = q, mult
        self.ints[f"{name}.shift"] = shift

    def block(self, name: str, b: Block, stream: str, max_dist: int):
        D = b.attn.proj.in_features
        H = b.attn.n_heads
        hd = D // H
        res = self.res[stream]
        n1 = self.norm(f"{name}.norm1", res) * b.norm1.weight.double()
        sq, sk, sv = (self.r[f"{name}.{p}"].clamp(min=1e-6).item() / 127 for p in "qkv")
        out = torch.tensor([sq] * D + [sk] * D + [sv] * D, dtype=torch.float64)
        self.linear(f"{name}.attn.qkv", b.attn.qkv.weight, n1, out)
        mult, shift = multiplier(sq * sk / math.sqrt(hd) * ATTN_UNIT)
        self.ints[f"{name}.attn.score_mult"], self.ints[f"{name}.attn.score_shift"] = (
            int(mult),
            shift,
        )
        slopes = torch.tensor(alibi_slopes(H), dtype=torch.float64)
        dist = torch.arange(max_dist, dtype=torch.float64)
        self.t[f"{name}.attn.alibi"] = torch.round(slopes[:, None] * dist * ATTN_UNIT).long()
        sa = self.r[f"{name}.attn_out"].clamp(min=1e-6) / 127  # per channel
        mult, shift = multiplier(sv / 2.0**PROB_BITS / sa)
        self.t[f"{name}.attn.out_mult"] = mult
        self.ints[f"{name}.attn.out_shift"] = shift
        self.linear(f"{name}.attn.proj", b.attn.proj.weight, sa, res)
        n2 = self.norm(f"{name}.norm2", res) * b.norm2.weight.double()
        sh = self.r[f"{name}.fc"].clamp(min=1e-6).item() / GELU_LIMIT
        self.linear(f"{name}.mlp.fc", b.mlp.fc.weight, n2, sh)
        sg = self.r[f"{name}.gelu"].clamp(min=1e-6).item() / 127
        idx = torch.arange(-GELU_LIMIT, GELU_LIMIT + 1, dtype=torch.float64)
        self.t[f"{name}.mlp.gelu"] = torch.round(F.gelu(idx * sh) / sg).clamp(-127, 127).long()
        self.linear(f"{name}.mlp.proj", b.mlp.proj.weight, sg, res)

    def run(self) -> IntMegabyte:
        m, c = self.m, self.m.config
        P, DG = c.patch_size, c.byte_dim
        rg, rl = self.res["global"], self.res["local"]
        emb = m.global_byte_emb.weight.double()[None] + m.global_pos_emb.double()[:, None]
        self.t["global_emb"] = torch.round(emb / rg).long()  # (P, 256, D_G)
        self.t["global_pad"] = torch.round(m.global_pad.double() / rg).long()
        for i, b in enumerate(m.global_blocks):
            self.block(f"global.{i}", b, "global", c.window)
        gn = self.norm("global_norm", rg) * m.global_norm.weight.double()  # (G,)
        w = m.global_to_local.weight.double()  # (L, D_G)
        ws = w[None] * gn.view(P, 1, DG)  # (P, L, D_G): slot p folds its own gains
        q, s = quantize_rows(ws)
        mult, shift = multiplier(s / rl)
        self.t["to_local.w"], self.t["to_local.mult"] = q, mult
        self.ints["to_local.shift"] = shift
        self.t["local_emb"] = torch.round(m.local_byte_emb.weight.double() / rl).long()
        for i, b in enumerate(m.local_blocks):
            self.block(f"local.{i}", b, "local", P)
        ln = self.norm("local_norm", rl) * m.local_norm.weight.double()
        self.linear("head", m.head.weight, ln, 1.0 / OUT_UNIT)
        self.t["attn_exp"] = exp_table(ATTN_UNIT, PROB_BITS)
        self.t["out_exp"] = exp_table(OUT_UNIT, OUT_EXP_BITS)
        tensors = {k: v.contiguous() for k, v in self.t.items()}
        return IntMegabyte(c, tensors, dict(self.ints))


@torch.no_grad()
def export(model: Megabyte, calibration: torch.Tensor) -> IntMegabyte:
    """The integer coding model of `model`, calibrated on `calibration` (N, T) bytes. The
    calibration runs on the model's device, in float32; the integer model is built on
    the CPU. `model` itself is not changed (the work is done on a copy)."""
    model = copy.deepcopy(model).float()
    ranges = {k: v.cpu() for k, v in calibrate(model, calibration).items()}
    return _Exporter(model.cpu(), ranges).run()


# ---------------------------------------------------------------------------- storage


def save_int_model(int_model: IntMegabyte, path: str | Path) -> Path:
    """Write the integer model as one safetensors file (through a temporary file)."""
    path = Path(path)
    meta = {
        "config": json.dumps(int_model.config.to_dict()),
        "ints": json.dumps(int_model.ints),
        "content_hash": int_model.content_hash(),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.cpu() for k, v in int_model.tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_int_model(path: str | Path) -> IntMegabyte:
    """Read an integer model written by save_int_model (on the CPU)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    config = MegabyteConfig.from_dict(json.loads(meta["config"]))
    return IntMegabyte(config, load_file(str(path)), json.loads(meta["ints"]))
