"""The `Trainer`: the one fine-tuning loop every fine-tuning method runs on.

A method supplies only its loss, as ``step_fn(step, generator) -> loss``; the
trainer does the rest:

- **scope**: only the parameters of a `ParameterScope` require grad, everything
  else is frozen (the previous ``requires_grad`` flags are restored afterwards);
- **frozen references without a second UNet**: `reference_weights` swaps saved
  tensors into the live parameters for a ``no_grad`` pass and swaps the trained
  ones back on exit.  ``trainer.reference()`` gives the original model (the
  scope as it was when the trainer was built); any dict of tensors (a stage-1
  model, originals of tensors outside the scope) works as well.  Only the
  pointers are swapped (``param.data``), nothing is copied;
- **Adam** (or 8-bit Adam, `optim.make_optimizer`), ``zero_grad`` every step,
  the learning rate constant (every paper here) or decayed to zero over the run
  (``lr_schedule``: ``linear``, ``cosine``; `optim.lr_factor`);
- **memory**: the only extra copy of the trained scope is the frozen reference
  (``trainer.originals``), taken from a snapshot the caller already holds when
  given (``originals_from``); frozen parameters are never copied;
- **determinism**: step ``k`` draws from `rng.step_generator` ``(seed, k)``;
- a progress bar with the loss (``progress=False`` disables it);
- a **NaN/inf guard**: a non-finite loss or gradient at step ``s`` raises
  `NonFiniteLossError` before the optimiser touches the weights.  The weights
  that gave it are those after step ``s`` - 1, so a checkpoint of step ``s``
  holds diverged weights and is deleted; the older ones stay: a checkpoint's
  predecessor is pruned only once the checkpoint's own weights gave a finite
  loss and gradient.  Non-finite weights are refused before every checkpoint
  and at the end.  The error names the checkpoint kept;
- **checkpoints** (`checkpoints`) every ``checkpoint_every`` steps and at the
  end; ``resume=True`` continues from the newest readable one and ends at the
  same weights as an uninterrupted run (bit-exact on the same device).  A
  checkpoint written under another lr (or schedule) is refused unless
  ``resume='new-lr'``; the lr history then goes to the metrics;
- optional **gradient checkpointing** and **autocast** (bf16/fp16, CUDA only;
  fp16 uses a gradient scaler);
- **data parallel** under ``accelerate launch`` (`data_parallel`): gradients
  and losses are averaged over processes before each step and the replicas are
  checked equal at the end.  One process runs exactly as without it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.scopes import ParameterScope, get_scope
from . import data_parallel
from .checkpoints import (
    CheckpointMismatchError,
    load_latest,
    newest_before,
    prune_checkpoints,
    restore_checkpoint,
    resume_lr_history,
    run_fingerprint,
    save_checkpoint,
)
from .config import FineTuneConfig
from .data_parallel import DataParallel
from .optim import lr_factor, make_optimizer
from .progress import loss_progress
from .rng import step_generator


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient (that step's update not applied) or NaN/inf weights.

    ``checkpoint``/``checkpoint_step``: the checkpoint kept (finite weights that gave a finite loss), or None.
    """

    def __init__(self, step: int, what: str, checkpoint: Path | None, checkpoint_step: int | None,
                 removed: Path | None = None, checkpointing: bool = True):
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step
        stop = "training stopped" + (" before updating the weights" if what != "weights" else "")
        dropped = f"; {removed.name} held the diverged weights and was deleted" if removed is not None else ""
        if checkpoint is not None:
            kept = (f"the last good checkpoint is {checkpoint} ({checkpoint_step} steps done{dropped}): to continue "
                    "from it, lower lr and rerun with resume='new-lr' (resume=True keeps the lr, which diverges "
                    "again); resume=False starts over")
        elif checkpointing:
            kept = f"no checkpoint with finite weights before it{dropped}: lower lr and rerun"
        else:
            kept = "no checkpoint was written (set checkpoint_dir/checkpoint_every to keep progress): lower lr and rerun"
        super().__init__(f"non-finite {what} at step {step}: {stop}; {kept}")



@contextlib.contextmanager
def reference_weights(module: nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily run ``module`` with ``weights`` (names relative to ``module``) under ``no_grad``.

    Swaps the tensors behind the live parameters/buffers (no copy, no second
    model) and swaps the current ones back on exit, even on error.  Do not call
    ``backward`` inside the block.
    """
    live = {**dict(module.named_buffers()), **dict(module.named_parameters())}
    missing = [n for n in weights if n not in live]
    if missing:
        raise KeyError(f"reference weights name tensors the model lacks: {missing[:5]}")
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for n, w in weights.items():
                t = live[n]
                if w.shape != t.shape:
                    raise ValueError(f"reference tensor {n} has shape {tuple(w.shape)}, model {tuple(t.shape)}")
                saved[n] = t.data
                t.data = w.to(device=t.device, dtype=t.dtype)
            yield
    finally:
        for n, d in saved.items():
            live[n].data = d



@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    resumed_from: int | None = None
    checkpoint: Path | None = None
    optimizer: str = "adam"
    processes: int = 1  # data-parallel processes (losses are their mean)
    lr_history: list[list] = field(default_factory=list)  # [first step, lr, schedule] entries

    def metrics(self) -> dict[str, Any]:
        tail = self.losses[-max(1, len(self.losses) // 10):] if self.losses else []
        out = {"iterations": self.steps, "final_loss": self.losses[-1] if self.losses else None,
               "loss_last_10pct": sum(tail) / len(tail) if tail else None, "resumed_from": self.resumed_from,
               "optimizer": self.optimizer}
        if self.processes > 1:
            out["data_parallel_processes"] = self.processes
        if len(self.lr_history) > 1:  # a resume changed the learning rate
            out["lr_history"] = self.lr_history
        return out



StepFn = Callable[[int, torch.Generator], torch.Tensor]


@dataclass
class Trainer:
    """Fine-tune the ``scope`` parameters of ``unet`` with Adam; see the module docstring."""

    unet: nn.Module
    scope: str | ParameterScope
    iterations: int
    lr: float = 1e-5
    lr_schedule: str = "constant"
    seed: int = 0
    run_key: str = ""
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool | str = False  # True, False or "new-lr" (`FineTuneConfig.resume`)
    progress: bool = True
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    optimizer: str = "adam"
    description: str = "fine-tuning"
    originals_from: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)
    params: dict[str, nn.Parameter] = field(init=False)
    originals: dict[str, torch.Tensor] = field(init=False)

    @classmethod
    def from_config(cls, unet, scope, config: FineTuneConfig, iterations: int, run_key: str = "",
                    description: str = "fine-tuning",
                    originals_from: Mapping[str, torch.Tensor] | None = None) -> "Trainer":
        return cls(unet, scope, iterations, lr=config.lr, lr_schedule=config.lr_schedule, seed=config.seed, run_key=run_key,
                   checkpoint_dir=config.checkpoint_dir, checkpoint_every=config.checkpoint_every,
                   keep_checkpoints=config.keep_checkpoints, resume=config.resume, progress=config.progress,
                   gradient_checkpointing=config.gradient_checkpointing,
                   mixed_precision=config.mixed_precision, optimizer=config.optimizer, description=description,
                   originals_from=originals_from)

    def __post_init__(self):
        self.scope = get_scope(self.scope)
        self.params = self.scope.select(self.unet)
        if not self.params:
            raise ValueError(f"scope {self.scope.name!r} selects no parameter of this UNet")
        low = sorted({str(p.dtype) for p in self.params.values() if p.dtype in (torch.float16, torch.bfloat16)})
        if low:
            raise ValueError(f"trainable weights are {', '.join(low)}: load the pipeline in float32 and use "
                             "mixed_precision='bf16'/'fp16' for speed (Adam updates vanish in half precision)")
        if self.mixed_precision != "no" and self.device.type != "cuda":
            raise ValueError(f"mixed_precision={self.mixed_precision!r} needs a CUDA device (the UNet is on {self.device})")
        if self.iterations < 0:
            raise ValueError("iterations must be >= 0")
        if not (math.isfinite(self.lr) and 0 <= self.lr <= torch.finfo(torch.float32).max):
            raise ValueError(f"lr must be a finite number from 0 to {torch.finfo(torch.float32).max:.3g} "
                             f"(got {self.lr})")
        self.originals = self._reference_copy(self.originals_from or {})
        self.originals_from = None  # only needed here; do not keep a second handle on the snapshot

    def _reference_copy(self, given: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The frozen scope tensors: taken from ``given`` (UNet-relative or 'unet.'-prefixed names) where
        it has them with the right shape and dtype (moved to the device, no copy when already there),
        cloned from the live parameters otherwise."""
        out = {}
        for n, p in self.params.items():
            t = given.get(n, given.get("unet." + n))
            if t is not None and t.shape == p.shape and t.dtype == p.dtype:
                out[n] = t.detach().to(p.device)
            else:
                out[n] = p.detach().clone()
        return out

    # ---------------------------------------------------------------- references
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def qualified_names(self) -> list[str]:
        """Scope tensor names with the pipeline prefix ('unet.'), as `EditSession` wants them."""
        return ["unet." + n for n in self.params]

    def reference(self, weights: Mapping[str, torch.Tensor] | None = None):
        """Context manager: the UNet with the scope's original tensors (or ``weights``), no grad."""
        return reference_weights(self.unet, self.originals if weights is None else weights)

    def autocast(self):
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ---------------------------------------------------------------- the loop
    def run(self, step_fn: StepFn) -> TrainResult:
        """Run ``iterations`` steps of ``step_fn`` in place on the UNet's scope parameters."""
        unet = self.unet
        flags = {n: p.requires_grad for n, p in unet.named_parameters()}
        had_gc = bool(getattr(unet, "gradient_checkpointing", False))
        for p in unet.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)
        if self.gradient_checkpointing and not had_gc:
            unet.enable_gradient_checkpointing()
        trainable = list(self.params.values())
        optimizer, self.optimizer_used = make_optimizer(trainable, self.lr, self.optimizer, self.device)
        scaler = torch.amp.GradScaler(self.device.type) if self.mixed_precision == "fp16" else None
        start, losses, resumed_from, last_ckpt = 0, [], None, None
        pending = None  # pending: a checkpoint step whose weights have not yet given a finite loss
        lr_history: list[list] = [[0, self.lr, self.lr_schedule]]
        dp = data_parallel.current()
        rank = dp.rank if dp is not None else 0
        run_id = run_fingerprint(self.run_key, self.originals)
        main = dp is None or dp.is_main

        def diverged(step: int, what: str) -> NonFiniteLossError:
            removed = None
            if pending == step and last_ckpt is not None:  # it holds the weights that just diverged
                removed = last_ckpt
                if main:
                    last_ckpt.unlink(missing_ok=True)
            kept, kept_step = newest_before(self.checkpoint_dir, step, run_id)
            return NonFiniteLossError(step, what, kept, kept_step, removed, self.checkpoint_dir is not None)

        try:
            if self.resume and self.checkpoint_dir is not None:
                found = load_latest(self.checkpoint_dir, run_id, dp.num_processes if dp is not None else 1)
                if found is not None:
                    start, tensors, meta, last_ckpt = found
                    lr_history = resume_lr_history(meta, last_ckpt, start, self.lr, self.lr_schedule,
                                                   allow_change=self.resume == "new-lr")
                    losses = restore_checkpoint(tensors, meta, self.params, self.device, optimizer, scaler, step_fn,
                                                rank)
                    resumed_from = pending = start
            if start > self.iterations:
                raise CheckpointMismatchError(f"checkpoint {last_ckpt} is at step {start}, past iterations={self.iterations}")
            show = self.progress and (dp is None or dp.is_main)
            with loss_progress(show, self.description, self.iterations, start) as advance:
                for step in range(start, self.iterations):
                    optimizer.zero_grad(set_to_none=True)
                    for group in optimizer.param_groups:
                        group["lr"] = self.lr * lr_factor(self.lr_schedule, step, self.iterations)
                    with self.autocast():
                        loss = step_fn(step, step_generator(self.seed, step, rank))
                    value = float(loss.detach())
                    bad = not math.isfinite(value)
                    if dp is not None and dp.any(bad):
                        bad, value = True, value if bad else float("nan")  # another process's loss
                    if bad:
                        raise diverged(step, f"loss ({value})")
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    if dp is not None:
                        value = self._average_gradients(dp, trainable, value)
                    if scaler is not None:
                        scaler.step(optimizer)  # skips steps whose (scaled) grads overflowed
                        scaler.update()
                    else:
                        grads = [p.grad for p in trainable if p.grad is not None]
                        if grads and not bool(torch.stack([g.float().norm() for g in grads]).isfinite().all()):
                            raise diverged(step, "gradient")
                        optimizer.step()
                    if pending == step:  # its weights gave a finite loss and gradient: older ones may go
                        if main:
                            prune_checkpoints(self.checkpoint_dir, self.keep_checkpoints)
                        pending = None
                    losses.append(value)
                    done = step + 1
                    if self.checkpoint_dir is not None and (
                            done == self.iterations or (self.checkpoint_every > 0 and done % self.checkpoint_every == 0)):
                        if not self._weights_finite():
                            raise diverged(done, "weights")
                        final = done == self.iterations
                        path = save_checkpoint(self.checkpoint_dir, done, run_id, self.params, optimizer, scaler,
                                               step_fn, losses, self.keep_checkpoints + (0 if final else 1), dp,
                                               lr_history)
                        last_ckpt, pending = path, None if final else done
                    advance(value)
            if self.iterations > start and not self._weights_finite():
                raise diverged(self.iterations, "weights")
            if dp is not None:
                data_parallel.check_replicas_agree(dp, self.params)
        finally:
            optimizer.zero_grad(set_to_none=True)
            for n, p in unet.named_parameters():
                p.requires_grad_(flags[n])
            if self.gradient_checkpointing and not had_gc:
                unet.disable_gradient_checkpointing()
        return TrainResult(steps=self.iterations, losses=losses, resumed_from=resumed_from, checkpoint=last_ckpt,
                           optimizer=self.optimizer_used, processes=dp.num_processes if dp is not None else 1,
                           lr_history=lr_history)

    def _weights_finite(self) -> bool:
        return all(bool(p.detach().isfinite().all()) for p in self.params.values())

    @staticmethod
    def _average_gradients(dp: DataParallel, trainable: list[nn.Parameter], loss: float) -> float:
        """Average the scope's gradients (a missing one counts as zero) and the loss over processes."""
        for p in trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        loss_t = torch.tensor([loss], dtype=torch.float32, device=trainable[0].device)
        dp.mean_([p.grad for p in trainable] + [loss_t])
        return float(loss_t)

