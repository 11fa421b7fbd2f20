"""The one fine-tuning loop every fine-tuning method (ESD, KSCU, TRCE stage 2) runs on.

A method supplies only its loss, as ``step_fn(step, generator) -> loss``; the
`Trainer` does the rest:

- **scope**: only the parameters of a `ParameterScope` require grad, everything
  else is frozen (the previous ``requires_grad`` flags are restored afterwards);
- **frozen references without a second UNet**: `reference_weights` swaps saved
  tensors into the live parameters for a ``no_grad`` pass and swaps the trained
  ones back on exit.  ``trainer.reference()`` gives the original model (the
  scope as it was when the trainer was built); any dict of tensors (for example
  a stage-1 model, or originals of tensors outside the scope) works as well.
  Only the pointers are swapped (``param.data``), nothing is copied;
- **Adam** with a configurable learning rate, ``zero_grad`` every step;
  ``lr_schedule`` keeps it constant (every paper here) or decays it to zero
  over the run (``linear``, ``cosine``; `lr_factor`).  Why offer a decay: at a
  constant rate the single-sample updates never settle, so the weights at a
  fixed iteration are one draw from a band.  ESD-u on the Shapes "red" (retain
  term at weight 10, constant lr 1e-4) evaluated every 25 iterations from 200
  to 375 gave explicit rates 0.03, 0.16, 0.06, 0.22, 0.31, 0.22, 0.06, 0.06 at
  0.80-0.94 of the other colours' adherence; with cosine decay over 300
  iterations two seeds end together (0.06 and 0.16 at 0.82) and the last
  100 iterations move the rate by at most 0.1;
  ``optimizer="adam8bit"`` uses bitsandbytes' 8-bit Adam on CUDA when it is
  importable (and falls back to torch Adam with a logged note otherwise);
- **memory**: the only extra copy of the trained scope is the frozen
  reference (``trainer.originals``).  `fine_tune` hands the trainer the
  snapshot its `EditSession` takes anyway, so on a CPU run the reference and
  the snapshot are the same tensors; on a GPU the snapshot stays in host RAM
  and the reference is the one device copy.  Frozen parameters are never
  copied (no second UNet);
- **determinism**: step ``k`` gets a fresh CPU ``torch.Generator`` seeded from
  ``(seed, k)`` (`step_generator`), so no RNG state has to be checkpointed;
- a **rich progress bar** with the loss (``progress=False`` disables it);
- a **NaN/inf guard**: a non-finite loss (or gradient) raises
  `NonFiniteLossError` before the optimiser touches the weights; no checkpoint
  is written after it, so the last good one stays as it was;
- **checkpoints** every ``checkpoint_every`` steps and at the end: scope
  tensors, Adam state, the step count, the loss history and the step
  function's own state (if it has ``state_dict``/``load_state_dict``, e.g.
  KSCU's running trajectory), in one safetensors file written to a temp file
  and moved into place with ``os.replace``.  ``resume=True`` continues from the
  newest readable checkpoint and ends at the same weights as an uninterrupted
  run (bit-exact on the same device);
- optional **gradient checkpointing** and **autocast** (bf16/fp16, CUDA only;
  fp16 uses a gradient scaler).

- **data parallel** under ``accelerate launch --multi_gpu --num_processes N``
  (`erasekit.methods.data_parallel`): each process draws its own samples, the
  scope's gradients are averaged over processes before each step, checkpoints
  hold every process's step state, and the replicas are checked equal at the
  end.  One process (no launcher) runs exactly as without it.

Prediction types.  `predict` returns the UNet output as-is, whether the model
predicts epsilon or v.  Every loss and target here is a LINEAR combination of
model outputs at the same latent and timestep (negative guidance, CFG,
guidance-enhanced targets), and the map from epsilon to v at fixed ``(z, t)``
is affine with the same coefficients for every output, so the combinations
mean the same thing for v-prediction models (squared errors are rescaled by a
per-timestep constant, nothing more).  DDIM sampling goes through the
scheduler, which reads its own ``prediction_type``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..concepts.spec import ConceptSpec
from ..models.conditioning import Condition, TextCondition, cat_conditions, expand_condition, uses_added_conditions
from ..models.delta import WeightDelta
from ..models.scopes import ParameterScope, get_scope
from . import data_parallel
from .base import EditSession, MethodConfig
from .data_parallel import DataParallel

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "erasekit-train-checkpoint"
_CKPT_RE = re.compile(r"^step-(\d{8})\.safetensors$")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss or gradient; the weights of that step were not updated."""

    def __init__(self, step: int, what: str, checkpoint: Path | None, checkpoint_step: int | None):
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step
        if checkpoint is not None:
            kept = (f"the last good checkpoint is kept unchanged at {checkpoint} ({checkpoint_step} steps done); "
                    "fix the cause (e.g. a lower lr) and rerun with resume=True")
        else:
            kept = "no checkpoint was written (set checkpoint_dir/checkpoint_every to keep progress)"
        super().__init__(f"non-finite {what} at step {step}: training stopped before updating the weights; {kept}")


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to another run (other method, config, concept or scope)."""


# ------------------------------------------------------------------ config
class FineTuneConfig(MethodConfig):
    """Settings of the shared trainer; method configs inherit them.

    ``iterations=None`` lets the method derive its budget (KSCU: by concept
    kind; TRCE: epochs x trajectories).  ``scope=None`` lets it choose its scope.
    """

    iterations: int | None = None
    lr: float = 1e-5
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    scope: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = False
    progress: bool = True
    gradient_checkpointing: bool = False
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    optimizer: Literal["adam", "adam8bit"] = "adam"

    # Trainer options beyond the papers (their default is the papers' constant learning rate).
    EXTENSIONS: ClassVar[tuple[str, ...]] = ("lr_schedule",)
    # Settings that do not change the result: a checkpoint may be resumed across them.
    RUN_KEY_EXCLUDE: ClassVar[tuple[str, ...]] = ("checkpoint_dir", "checkpoint_every", "keep_checkpoints", "resume", "progress",
                       "gradient_checkpointing")


def run_key(method: str, config: FineTuneConfig, concept: ConceptSpec | None = None, **extra: Any) -> str:
    """Identifies a run for checkpoint compatibility (method, result-relevant config, concept)."""
    cfg = {k: v for k, v in config.fingerprint().items() if k not in FineTuneConfig.RUN_KEY_EXCLUDE}
    payload = {"method": method, "config": cfg, "concept": concept.effective_dict() if concept else None, **extra}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ------------------------------------------------------------------ small helpers
def lr_factor(schedule: str, step: int, iterations: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``iterations``, as a fraction of the configured one.

    ``constant`` (every paper here); ``linear`` and ``cosine`` decay to zero over the run
    (the last step still moves).  A pure function of the step, so nothing about it is checkpointed.
    """
    if schedule == "constant" or iterations <= 0:
        return 1.0
    frac = step / iterations
    if schedule == "linear":
        return 1.0 - frac
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown lr_schedule {schedule!r}: constant, linear or cosine")


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator for step ``step`` of a run with ``seed`` (independent of any earlier step).

    ``rank`` > 0 is a data-parallel process's own stream; process 0 draws what a one-process run draws.
    """
    digest = hashlib.sha256(f"erasekit:{seed}:{step}{f':rank{rank}' if rank else ''}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def randint(n: int, generator: torch.Generator) -> int:
    """Uniform integer in [0, n) from ``generator``."""
    return int(torch.randint(n, (1,), generator=generator))


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


def latent_shape(unet: nn.Module, batch: int = 1) -> tuple[int, ...]:
    """(batch, in_channels, H, W) of the UNet's latents, from its config."""
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (batch, unet.config.in_channels, h, w)


def initial_latents(unet: nn.Module, generator: torch.Generator, batch: int = 1) -> torch.Tensor:
    """Seeded Gaussian noise of the UNet's latent shape, on its device (DDIM's init sigma is 1)."""
    z = torch.randn(latent_shape(unet, batch), generator=generator)
    return z.to(device=unet.device, dtype=unet.dtype)


def _expand(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x.expand(batch, *x.shape[1:]) if x.shape[0] == 1 and batch > 1 else x


def predict(unet: nn.Module, latents: torch.Tensor, t: torch.Tensor | int, embeds: Condition,
            added_cond: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The UNet's raw output (epsilon or v, as the model predicts) for a batch.

    ``t`` is a scalar or one timestep per sample; ``embeds`` is a
    `TextCondition` (B or 1 rows; from `encode_conditions`, which also carries
    SDXL's pooled text and time ids) or a plain (B or 1, L, D) tensor.  SDXL
    UNets (``addition_embed_type='text_time'``) given a plain tensor need
    ``added_cond`` with ``text_embeds`` and ``time_ids`` (batch B or 1).
    """
    b = latents.shape[0]
    t = torch.as_tensor(t, device=latents.device)
    if isinstance(embeds, TextCondition):
        added_cond = added_cond or embeds.added_cond_kwargs()
        embeds = embeds.embeds
    kwargs: dict[str, Any] = {}
    if uses_added_conditions(unet):
        if added_cond is None:
            raise ValueError("this UNet (SDXL) needs its added conditions: pass a TextCondition from "
                             "encode_conditions, or added_cond={'text_embeds': ..., 'time_ids': ...}")
        kwargs["added_cond_kwargs"] = {k: _expand(v, b).to(latents.device) for k, v in added_cond.items()}
    embeds = _expand(embeds, b).to(device=latents.device)
    return unet(latents, t, encoder_hidden_states=embeds, return_dict=False, **kwargs)[0]


def require_supported_unet(unet: nn.Module, method: str) -> None:
    """Fine-tuning methods condition SD-1.x/2.x UNets (text only) and SDXL (text + pooled text + time ids)."""
    kind = getattr(unet.config, "addition_embed_type", None)
    if kind not in (None, "text_time"):
        raise NotImplementedError(f"{method} supports SD-1.x, SD-2.x and SDXL UNets; this UNet's "
                                  f"addition_embed_type={kind!r} is not supported")


# ------------------------------------------------------------------ DDIM sampling
class DDIMSampler:
    """DDIM with ``n_steps`` on a COPY of a pipeline scheduler's config; step s = 0 is the noisiest."""

    def __init__(self, scheduler, n_steps: int = 50):
        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.scheduler.set_timesteps(n_steps)
        self.n_steps = n_steps
        self.timesteps = self.scheduler.timesteps.clone()

    def timestep(self, s: int) -> int:
        """Timestep of step s (SD-1.x, 50 steps, steps_offset=1: 981 - 20 s)."""
        return int(self.timesteps[s])

    @torch.no_grad()
    def guided(self, unet, z, s, embeds_cond, embeds_uncond, guidance: float) -> torch.Tensor:
        """Classifier-free-guided model output at step s (one batched UNet call; ``embeds_cond=None``: unconditional)."""
        b = z.shape[0]
        if embeds_cond is None:
            return predict(unet, z, self.timestep(s), embeds_uncond)
        emb = cat_conditions([expand_condition(embeds_cond, b), expand_condition(embeds_uncond, b)])
        out_c, out_u = predict(unet, torch.cat([z, z]), self.timestep(s), emb).chunk(2)
        return out_u + guidance * (out_c - out_u)

    @torch.no_grad()
    def step(self, model_output: torch.Tensor, s: int, z: torch.Tensor) -> torch.Tensor:
        """Latent at step s + 1 from the latent at step s."""
        return self.scheduler.step(model_output, self.timestep(s), z).prev_sample

    @torch.no_grad()
    def denoise(self, unet, z, start_step: int, until_step: int, embeds_cond, embeds_uncond, guidance: float,
                keep_all: bool = False):
        """Run steps start_step .. until_step-1; the latent at ``until_step`` (and, with keep_all, all of them)."""
        if not 0 <= start_step <= until_step <= self.n_steps:
            raise ValueError(f"need 0 <= start_step ({start_step}) <= until_step ({until_step}) <= {self.n_steps}")
        kept = [z] if keep_all else None
        for s in range(start_step, until_step):
            z = self.step(self.guided(unet, z, s, embeds_cond, embeds_uncond, guidance), s, z)
            if kept is not None:
                kept.append(z)
        return (z, torch.stack(kept, dim=1)) if keep_all else z


def partial_denoise(pipe_unet, scheduler, embeds_cond, embeds_uncond, latents, until_step: int,
                    n_steps: int = 50, guidance: float = 3.0, start_step: int = 0, keep_all: bool = False):
    """Denoise ``latents`` (the latent at ``start_step``, default pure noise) with DDIM and CFG down to ``until_step``.

    Uses a copy of ``scheduler``'s config (the pipeline's scheduler is never
    changed) and the UNet's CURRENT weights, without gradients.  Returns
    ``(z, t)``: the latent at step ``until_step`` and that step's timestep
    (``None`` when ``until_step == n_steps``, the finished sample).  With
    ``keep_all`` returns ``(z, t, trajectory)`` where ``trajectory`` is
    (B, until_step - start_step + 1, C, H, W): every latent from ``start_step`` on.
    """
    sampler = DDIMSampler(scheduler, n_steps)
    out = sampler.denoise(pipe_unet, latents, start_step, until_step, embeds_cond, embeds_uncond, guidance, keep_all)
    t = sampler.timestep(until_step) if until_step < n_steps else None
    return (out[0], t, out[1]) if keep_all else (out, t)


# ------------------------------------------------------------------ checkpoints
def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoint files in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    resumed_from: int | None = None
    checkpoint: Path | None = None
    optimizer: str = "adam"
    processes: int = 1  # data-parallel processes (losses are their mean)

    def metrics(self) -> dict[str, Any]:
        tail = self.losses[-max(1, len(self.losses) // 10):] if self.losses else []
        out = {"iterations": self.steps, "final_loss": self.losses[-1] if self.losses else None,
               "loss_last_10pct": sum(tail) / len(tail) if tail else None, "resumed_from": self.resumed_from,
               "optimizer": self.optimizer}
        if self.processes > 1:
            out["data_parallel_processes"] = self.processes
        return out


def make_optimizer(params: list[nn.Parameter], lr: float, kind: str, device: torch.device):
    """(optimizer, name actually used): torch Adam, or bitsandbytes' 8-bit Adam for ``kind='adam8bit'``.

    8-bit Adam keeps both moments in 8 bits (blockwise quantised), a quarter of
    Adam's 8 bytes per trained parameter.  It needs bitsandbytes and a CUDA
    device; without them the run uses torch Adam and logs why.
    """
    if kind == "adam8bit":
        reason = None
        if device.type != "cuda":
            reason = f"it needs a CUDA device (training runs on {device})"
        else:
            try:
                import bitsandbytes as bnb
            except ImportError:
                reason = "bitsandbytes is not installed (pip install bitsandbytes)"
            else:
                return bnb.optim.Adam8bit(params, lr=lr), "adam8bit"
        log.warning("optimizer='adam8bit' unavailable: %s; using torch.optim.Adam", reason)
    elif kind != "adam":
        raise ValueError(f"unknown optimizer {kind!r} (adam or adam8bit)")
    return torch.optim.Adam(params, lr=lr), "adam"


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
    resume: bool = False
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

    # ---------------------------------------------------------------- checkpoint io
    def _fingerprint(self) -> str:
        h = hashlib.sha256(self.run_key.encode())
        for n, t in self.originals.items():
            h.update(f"{n}:{tuple(t.shape)}:{t.dtype}".encode())
        for n in list(self.originals)[:: max(1, len(self.originals) // 8)]:  # a few tensors' bytes
            h.update(self.originals[n].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:20]

    def _save(self, step: int, optimizer, scaler, step_fn, losses: list[float], dp: DataParallel | None = None
              ) -> Path:
        folder = Path(self.checkpoint_dir)
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
        for i, (n, p) in enumerate(self.params.items()):
            tensors[f"param/{n}"] = p.detach()
            for k, v in state.get(i, {}).items():
                tensors[f"adam/{n}/{k}"] = torch.as_tensor(v)
        for rank, entries in enumerate(per_rank):
            for k, v in entries.items():
                tensors[f"state/{k}" if rank == 0 else f"state@{rank}/{k}"] = v
        tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
        meta = {"format": CHECKPOINT_FORMAT, "step": str(step), "run": self._fingerprint(),
                "processes": str(len(per_rank)),
                "scaler": json.dumps(scaler.state_dict() if scaler is not None else {})}
        _atomic_save(tensors, meta, path)
        for _, old in list_checkpoints(folder)[: -max(1, self.keep_checkpoints)]:
            old.unlink(missing_ok=True)
        if dp is not None:
            dp.wait()
        return path

    def _load_latest(self, processes: int = 1) -> tuple[int, dict[str, torch.Tensor], dict[str, str], Path] | None:
        run = self._fingerprint()
        for step, path in reversed(list_checkpoints(self.checkpoint_dir)):
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

    def _restore(self, tensors, meta, optimizer, scaler, step_fn, rank: int = 0) -> list[float]:
        names = list(self.params)
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(tensors[f"param/{n}"])
        state = {}
        for i, n in enumerate(names):
            entry = {k.rsplit("/", 1)[1]: v.to(self.device) if v.dim() else v
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
            step_fn.load_state_dict({k: v.to(self.device) for k, v in own.items()})
        return [float(x) for x in tensors["losses"].tolist()]

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
        last_ckpt_step = None
        dp = data_parallel.current()
        rank = dp.rank if dp is not None else 0
        try:
            if self.resume and self.checkpoint_dir is not None:
                found = self._load_latest(dp.num_processes if dp is not None else 1)
                if found is not None:
                    start, tensors, meta, last_ckpt = found
                    losses = self._restore(tensors, meta, optimizer, scaler, step_fn, rank)
                    resumed_from = last_ckpt_step = start
            if start > self.iterations:
                raise CheckpointMismatchError(f"checkpoint {last_ckpt} is at step {start}, past iterations={self.iterations}")
            show = self.progress and (dp is None or dp.is_main)
            with _progress(show, self.description, self.iterations, start) as advance:
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
                        raise NonFiniteLossError(step, f"loss ({value})", last_ckpt, last_ckpt_step)
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    if dp is not None:
                        value = self._average_gradients(dp, trainable, value)
                    if scaler is not None:
                        scaler.step(optimizer)  # skips steps whose (scaled) grads overflowed
                        scaler.update()
                    else:
                        grads = [p.grad for p in trainable if p.grad is not None]
                        if grads and not bool(torch.stack([g.float().norm() for g in grads]).isfinite().all()):
                            raise NonFiniteLossError(step, "gradient", last_ckpt, last_ckpt_step)
                        optimizer.step()
                    losses.append(value)
                    done = step + 1
                    if self.checkpoint_dir is not None and (
                            done == self.iterations or (self.checkpoint_every > 0 and done % self.checkpoint_every == 0)):
                        last_ckpt, last_ckpt_step = self._save(done, optimizer, scaler, step_fn, losses, dp), done
                    advance(value)
            if dp is not None:
                data_parallel.check_replicas_agree(dp, self.params)
        finally:
            optimizer.zero_grad(set_to_none=True)
            for n, p in unet.named_parameters():
                p.requires_grad_(flags[n])
            if self.gradient_checkpointing and not had_gc:
                unet.disable_gradient_checkpointing()
        return TrainResult(steps=self.iterations, losses=losses, resumed_from=resumed_from, checkpoint=last_ckpt,
                           optimizer=self.optimizer_used, processes=dp.num_processes if dp is not None else 1)

    @staticmethod
    def _average_gradients(dp: DataParallel, trainable: list[nn.Parameter], loss: float) -> float:
        """Average the scope's gradients (a missing one counts as zero) and the loss over processes."""
        for p in trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        loss_t = torch.tensor([loss], dtype=torch.float32, device=trainable[0].device)
        dp.mean_([p.grad for p in trainable] + [loss_t])
        return float(loss_t)


@contextlib.contextmanager
def _progress(enabled: bool, description: str, total: int, start: int):
    if not enabled:
        yield lambda loss: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, completed=start, loss="-")
        yield lambda loss: bar.update(task, advance=1, loss=f"{loss:.4g}")


# ------------------------------------------------------------------ method entry point
def fine_tune(pipe, concept: ConceptSpec, config: FineTuneConfig, method: str, scope: str | ParameterScope,
              iterations: int, make_step_fn: Callable[[Trainer], StepFn], **key_extra: Any) -> WeightDelta:
    """Run a fine-tuning method on ``pipe`` and return its delta; ``pipe`` is left unchanged.

    ``make_step_fn(trainer)`` builds the method's step function once the
    trainer exists (so it can use ``trainer.reference()``).
    """
    names = list(get_scope(scope).select(pipe.unet, prefix="unet."))
    with EditSession(pipe, names, method, config, concept) as session:
        trainer = Trainer.from_config(pipe.unet, scope, config, iterations,
                                      run_key=run_key(method, config, concept, **key_extra), description=method,
                                      originals_from=session.originals)
        result = trainer.run(make_step_fn(trainer))
        session.metrics.update(result.metrics(), scope=trainer.scope.name)
    return session.delta
