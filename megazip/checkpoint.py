"""Checkpoints on disk: a folder with `config.json` (model config and metadata) and
`model.safetensors` (float weights), plus `train_state.pt` while training (optimizer,
step, RNG) for resuming. Shipped models live in the `megazip.models` package as
`NAME.json` + `NAME.safetensors` and are found by name.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only by the functions that need it (start fast)
    import torch

    from .model import Megabyte

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INT_MODEL_FILE = "int_model.safetensors"  # the integer coding model (megazip/export.py)
DEFAULT_MODEL = "tiny"


class ModelNotFound(Exception):
    """No checkpoint at a path and no shipped model of that name."""


def shipped_models_dir() -> Path:
    return Path(str(resources.files("megazip.models")))


def shipped_model_names() -> list[str]:
    return sorted(p.stem for p in shipped_models_dir().glob("*.json"))


def resolve(name_or_path: str | Path) -> tuple[Path, Path]:
    """(config.json path, weights path) for a checkpoint folder, a NAME.json file, or the
    name of a shipped model. Raises ModelNotFound."""
    p = Path(name_or_path)
    if p.is_dir() and (p / CONFIG_FILE).is_file():
        return p / CONFIG_FILE, p / WEIGHTS_FILE
    if p.suffix == ".json" and p.is_file():
        return p, p.with_suffix(".safetensors")
    shipped = shipped_models_dir() / f"{name_or_path}.json"
    if shipped.is_file():
        return shipped, shipped.with_suffix(".safetensors")
    known = ", ".join(shipped_model_names()) or "none"
    raise ModelNotFound(f"model not found: {name_or_path} (shipped models: {known})")


def has_float_weights(name_or_path: str | Path) -> bool:
    """Whether a checkpoint or shipped model has float weights (a shipped model may carry
    only its integer coding model, to stay small)."""
    return resolve(name_or_path)[1].is_file()


def int_model_path(name_or_path: str | Path) -> Path:
    """Path of the integer coding model of a checkpoint folder or shipped model."""
    cfg_path, _ = resolve(name_or_path)
    if cfg_path.name == CONFIG_FILE:
        return cfg_path.with_name(INT_MODEL_FILE)
    return cfg_path.with_name(cfg_path.stem + ".int_model.safetensors")


def load_int_model(name_or_path: str | Path):
    """The integer coding model (IntMegabyte, on the CPU) of a checkpoint or shipped model.
    Raises ModelNotFound when it has none (train or export it first)."""
    from .export import load_int_model as _load

    path = int_model_path(name_or_path)
    if not path.is_file():
        raise ModelNotFound(f"model {name_or_path} has no integer coding model ({path.name})")
    return _load(path)


def read_meta(name_or_path: str | Path) -> dict:
    """The JSON metadata of a checkpoint (its `config` key holds the MegabyteConfig)."""
    cfg_path, _ = resolve(name_or_path)
    return json.loads(cfg_path.read_text())


def save(folder: str | Path, model: Megabyte, meta: dict | None = None) -> Path:
    """Write config.json and model.safetensors into `folder` (created if needed), each
    through a temporary file and a rename so a crash never leaves a torn checkpoint."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    meta["config"] = model.config.to_dict()
    meta.setdefault("params", model.num_params())
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS_FILE)
    tmp = folder / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(folder / CONFIG_FILE)
    return folder


def load(name_or_path: str | Path, device: str | torch.device = "cpu") -> tuple[Megabyte, dict]:
    """(float model in eval mode, metadata) from a checkpoint folder or a shipped name."""
    from safetensors.torch import load_file

    from .model import Megabyte, MegabyteConfig

    cfg_path, weights_path = resolve(name_or_path)
    meta = json.loads(cfg_path.read_text())
    if "config" not in meta or not weights_path.is_file():
        raise ModelNotFound(
            f"model {name_or_path} has no float weights (only its integer coding model)"
        )
    model = Megabyte(MegabyteConfig.from_dict(meta["config"]))
    model.load_state_dict(load_file(str(weights_path)))
    return model.to(device).eval(), meta
