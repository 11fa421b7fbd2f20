"""Training checkpoints: one safetensors file per saved step, written atomically.

A checkpoint holds the scope tensors, the Adam state, the step count, the loss
history, the gradient scaler's state and the step function's own state (if it
has ``state_dict``/``load_state_dict``, e.g. KSCU's running trajectory; under
data parallelism every process's).  It is written to a temp file and moved
into place with ``os.replace``.  `load_latest` returns the newest readable one
of the same run (its fingerprint covers the run key and the frozen reference
weights); an unreadable file is skipped, another run's is an error.

The learning rate and its schedule are not part of the run key: a checkpoint
records them (with the steps where they changed, ``lr_history``) and
`resume_lr_history` refuses a resume under another learning rate unless the
caller allows it explicitly, then appends the change to the history.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..models.digest import new_hash, update_tensor
from ..world.atomic import save_safetensors

from .data_parallel import DataParallel

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "erasekit-train-checkpoint"
_CKPT_RE = re.compile(r"^step-(\d{8})\.safetensors$")


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another run (other method, config, concept or scope)."""


def save_tensors_atomic(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write ``tensors`` (moved to CPU) and ``metadata`` to ``path`` as safetensors (`world.atomic`)."""
    save_safetensors(path, tensors, metadata)


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoint files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def run_fingerprint(run_key: str, originals: Mapping[str, torch.Tensor]) -> str:
    """The run key plus the names, shapes, dtypes and a few tensors' bytes of the frozen reference."""
    h = new_hash(run_key)
    for n, t in originals.items():
        h.update(f"{n}:{tuple(t.shape)}:{t.dtype}".encode())
    for n in list(originals)[:: max(1, len(originals) // 8)]:  # a few tensors' bytes
        update_tensor(h, originals[n])
    return h.hexdigest()[:20]


def save_checkpoint(folder: str | Path, step: int, run: str, params: Mapping[str, nn.Parameter], optimizer, scaler,
                    step_fn, losses: list[float], keep: int, dp: DataParallel | None = None,
                    lr_history: list[list] | None = None) -> Path:
    """Write the checkpoint of ``step`` (process 0 writes; all gather), keeping the newest ``keep`` files.

    ``lr_history``: ``[first step, lr, schedule]`` entries of the run so far (`resume_lr_history`).
    """
    folder = Path(folder)
    own = {k: torch.as_tensor(v).detach().cpu() for k, v in
           (step_fn.state_dict() if hasattr(step_fn, "state_dict") else {}).items()}
    per_rank = dp.gather(own) if dp is not None else [own]  # every process's step state, rank order
    path = folder / f"step-{step:08d}.safetensors"
    if dp is not None and not dp.is_main:
        dp.wait()  # process 0 writes
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    state = optimizer.state_dict()["state"]
    for i, (n, p) in enumerate(params.items()):
        tensors[f"param/{n}"] = p.detach()
        for k, v in state.get(i, {}).items():
            tensors[f"adam/{n}/{k}"] = torch.as_tensor(v)
    for rank, entries in enumerate(per_rank):
        for k, v in entries.items():
            tensors[f"state/{k}" if rank == 0 else f"state@{rank}/{k}"] = v
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    meta = {"format": CHECKPOINT_FORMAT, "step": str(step), "run": run,
            "processes": str(len(per_rank)),
            "scaler": json.dumps(scaler.state_dict() if scaler is not None else {}),
            "lr_history": json.dumps(lr_history or [])}
    save_tensors_atomic(tensors, meta, path)
    prune_checkpoints(folder, keep)
    if dp is not None:
        dp.wait()
    return path


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` (at least 1) checkpoint files of ``folder``."""
    for _, old in list_checkpoints(folder)[: -max(1, keep)]:
        old.unlink(missing_ok=True)


def newest_before(folder: str | Path | None, step: int, run: str) -> tuple[Path, int] | tuple[None, None]:
    """(path, step) of the newest readable checkpoint of run ``run`` in ``folder`` before ``step``, else (None, None)."""
    for found, path in reversed(list_checkpoints(folder) if folder is not None else []):
        if found >= step:
            continue
        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("run") == run:
                    return path, found
        except Exception:  # unreadable: not one to resume from
            continue
    return None, None


def resume_lr_history(meta: Mapping[str, str], path: Path, step: int, lr: float, schedule: str,
                      allow_change: bool) -> list[list]:
    """The learning-rate history a resume from checkpoint ``path`` (at ``step``) continues.

    Each entry is ``[first step, lr, schedule]``.  When ``lr``/``schedule`` differ from the
    checkpoint's last entry the resume is refused unless ``allow_change``; then the new
    entry starts at ``step``.
    """
    history = json.loads(meta.get("lr_history") or "[]")
    if not history:
        raise CheckpointMismatchError(f"{path} records no learning rate (written by an older version); "
                                      "use another checkpoint_dir or resume=False")
    _, old_lr, old_schedule = history[-1]
    if (float(old_lr), old_schedule) == (float(lr), schedule):
        return history
    if not allow_change:
        raise CheckpointMismatchError(
            f"{path} was written with lr={old_lr} ({old_schedule}), this run has lr={lr} ({schedule}): "
            f"set resume to 'new-lr' to continue it from step {step} with the new lr, "
            "or resume=False (or another checkpoint_dir) to start over")
    return [*history, [step, lr, schedule]]


def load_latest(folder: str | Path, run: str, processes: int = 1
                ) -> tuple[int, dict[str, torch.Tensor], dict[str, str], Path] | None:
    """(step, tensors, metadata, path) of the newest readable checkpoint of run ``run``, or None."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as err:  # truncated or garbled file: fall back to an older one
            log.warning("skipping unreadable checkpoint %s (%s)", path, str(err).splitlines()[0])
            continue
        if meta.get("format") != CHECKPOINT_FORMAT or int(meta.get("step", -1)) != step:
            log.warning("skipping %s: not an erasekit training checkpoint", path)
            continue
        if meta.get("run") != run:
            raise CheckpointMismatchError(
                f"{path} belongs to another run (method, config, concept, scope or base weights differ); "
                "use another checkpoint_dir or resume=False")
        if int(meta.get("processes", "1")) != processes:
            raise CheckpointMismatchError(
                f"{path} was written by a run on {meta.get('processes', '1')} data-parallel process(es), this one "
                f"has {processes}: each process draws its own samples, so resume with the same number")
        return step, tensors, meta, path
    return None


def restore_checkpoint(tensors: dict[str, torch.Tensor], meta: dict[str, Any], params: Mapping[str, nn.Parameter],
                       device: torch.device, optimizer, scaler, step_fn, rank: int = 0) -> list[float]:
    """Put a checkpoint's weights, Adam and scaler state and this process's step state back; its losses."""
    names = list(params)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param/{n}"])
    state = {}
    for i, n in enumerate(names):
        entry = {k.rsplit("/", 1)[1]: v.to(device) if v.dim() else v
                 for k, v in tensors.items() if k.startswith(f"adam/{n}/")}
        if entry:
            state[i] = entry
    opt_state = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": opt_state["param_groups"]})
    if scaler is not None:
        scaler.load_state_dict(json.loads(meta.get("scaler", "{}")) or scaler.state_dict())
    prefix = f"state@{rank}/" if rank else "state/"  # this process's own step state
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if hasattr(step_fn, "load_state_dict"):
        step_fn.load_state_dict({k: v.to(device) for k, v in own.items()})
    return [float(x) for x in tensors["losses"].tolist()]
