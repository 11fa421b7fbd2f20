"""Resumable training checkpoints, kept outside the repository.

A checkpoint is a folder ``step-N`` holding the model state dicts as
safetensors, the optimizer state (loaded with ``weights_only=True``, so no
arbitrary objects are unpickled) and ``state.json``.  Folders are written to a
temporary name and renamed, so an interrupted write never leaves a broken
checkpoint; only the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DEFAULT_ROOT = Path(os.environ.get("ERASEKIT_TRAIN_DIR", Path.home() / ".cache" / "erasekit" / "train"))


def save_checkpoint(root: Path, step: int, modules: dict[str, torch.nn.Module | dict], optimizer=None, state=None, keep: int = 2) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, module in modules.items():
        sd = module.state_dict() if isinstance(module, torch.nn.Module) else module
        save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, tmp / f"{name}.safetensors")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **(state or {})}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    found = sorted(Path(root).glob("step-*")) if Path(root).exists() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module | dict], optimizer=None) -> dict:
    path = Path(path)
    for name, module in modules.items():
        sd = load_file(path / f"{name}.safetensors")
        if isinstance(module, torch.nn.Module):
            module.load_state_dict(sd, strict=True)
        else:
            for k, v in sd.items():
                module[k].copy_(v)
    if optimizer is not None and (path / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())


class EMA:
    """Exponential moving average of a module's floating-point parameters."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v, 1 - decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        sd = module.state_dict()
        for k, v in self.shadow.items():
            sd[k].copy_(v)

    def state_dict(self) -> dict:
        return self.shadow
