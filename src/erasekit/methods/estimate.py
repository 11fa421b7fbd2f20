"""Peak GPU memory and wall time of each method on real checkpoints, estimated without downloading them.

How an estimate is made (`estimate`):

1. **Parameter counts and per-sample UNet cost** of the real architecture
   (`erasekit.models.cost`: FLOPs and saved activations, measured on the
   ``meta`` device, with and without gradient checkpointing).
2. **Work per method** (`method_work`, the ``work`` of each method's
   `MethodSpec`): UNet samples per iteration without grad (partial
   generations, frozen references) and with grad, the training batch, and
   one-off sampling (trajectories, latent pools), read off each method's
   algorithm and config.  `tests/test_estimate.py` checks these counts
   against UNet calls COUNTED while the methods run on the tiny models.
3. **Memory** = pipeline weights (float32, as fine-tuning requires) + one
   reference copy, gradients and optimiser state of the trained scope (Adam:
   8 bytes/parameter; 8-bit Adam: 2) + saved activations x training batch
   (for TRuST's CSR, the graph of the gradient: the forward with the math
   attention kernel plus ``autograd.grad(create_graph=True)``; halved under
   bf16 autocast, which also caches a bf16 copy of the trained weights) +
   saliency masks (1 byte per trained entry) and, with masks that move, the
   masked step's copy of the weights and Adam moments (12 bytes) + a fixed
   CUDA overhead.  This is the training step's peak: a static mask made
   before training (SalUn's top half over the whole UNet) holds the running
   gradient sum, one new gradient and the masks (``saliency_masks`` ranks
   the tensors one at a time), less than the step's gradients and Adam state.
4. **Time** = FLOPs / an effective throughput calibrated on the one timing
   the papers give for a 24 GB GPU: TRCE stage 2, 300 iterations in about
   300 s on an RTX 4090 (SD-1.4, 512 px).  One-off sampling is reported
   separately (TRCE's trajectories are cached and reused across runs).

These are estimates from counted work, not measurements on a GPU: expect the
time to be right within a factor of about two, memory within ~20%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from ..models.cost import (GIB, KNOWN_MODELS, double_backward_saved_bytes, model_spec, text_encoder_params,
                           unet_cost, vae_params)
from .base import MethodWork, get_method

CUDA_OVERHEAD_BYTES = int(0.8 * GIB)  # CUDA context, allocator fragmentation, cuBLAS workspaces


def method_work(method: str, config=None, kind: str = "object") -> MethodWork:
    """Counts for ``method`` with ``config`` (default: the method's SD config) on a concept of ``kind``."""
    spec = get_method(method)
    return spec.work(spec, config if config is not None else spec.config_cls(), kind)


# ------------------------------------------------------------------ the estimate
# Calibration: TRCE stage 2 (300 iterations: 4 no-grad + 3 grad samples each, visual scope) ~300 s on an
# RTX 4090 with SD-1.4 at 512 px (TRCE paper).  Effective FLOP/s = that work / 300 s.
CALIBRATION = {"model": "sd15", "method": "trce-v", "iterations": 300, "seconds": 300.0, "gpu": "RTX 4090 (24 GB)"}


@lru_cache(maxsize=1)
def effective_flops_per_second() -> float:
    cost = unet_cost(KNOWN_MODELS[CALIBRATION["model"]].unet, "visual")
    per_iter = 4 * cost.forward_flops + 3 * (cost.forward_flops + cost.backward_flops)
    return CALIBRATION["iterations"] * per_iter / CALIBRATION["seconds"]


@dataclass
class Estimate:
    method: str
    model: str
    gpu_memory_gib: float
    peak_gib: float
    fits: bool
    train_seconds: float
    setup_seconds: float
    memory_gib: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.memory_gib.items())
        fit = "fits" if self.fits else "does NOT fit"
        lines = [
            f"{self.method} on {self.model}: peak ~{self.peak_gib:.1f} GiB ({fit} in {self.gpu_memory_gib:.0f} GiB), "
            f"training ~{format_duration(self.train_seconds)}"
            + (f" + one-off sampling ~{format_duration(self.setup_seconds)}" if self.setup_seconds else ""),
            f"  memory (GiB): {parts}",
            "  settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
        ]
        if self.notes:
            lines.append(f"  note: {self.notes}")
        return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """Seconds as '42 s', '17 min' or '2.3 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(method: str, model: str = "sd15", config=None, kind: str = "object", gpu_memory_gib: float = 24.0,
             gradient_checkpointing: bool | None = None, mixed_precision: str | None = None,
             optimizer: str | None = None) -> Estimate:
    """Peak memory and time of ``method`` on ``model`` (see the module docstring for the derivation).

    ``gradient_checkpointing`` / ``mixed_precision`` / ``optimizer`` default to the config's values.
    """
    spec = model_spec(model)
    work = method_work(method, config, kind)
    cfg = config
    gc_on = gradient_checkpointing if gradient_checkpointing is not None else bool(getattr(cfg, "gradient_checkpointing", False))
    precision = mixed_precision or getattr(cfg, "mixed_precision", "no")
    opt = optimizer or getattr(cfg, "optimizer", "adam")
    cost = unet_cost(spec.unet, work.scope)
    text = sum(text_encoder_params(c, conf) for c, conf in spec.text_encoders)
    vae = vae_params(spec.vae)
    params = {"unet": cost.params, "text_encoders": text, "vae": vae, "trained_scope": cost.scope_params}
    mem = {"weights (fp32)": 4 * (cost.params + text + vae) / GIB}
    flops = effective_flops_per_second()
    if work.closed_form:
        mem["cuda overhead"] = CUDA_OVERHEAD_BYTES / GIB
        peak = sum(mem.values())
        return Estimate(method, spec.name, gpu_memory_gib, peak, peak <= gpu_memory_gib, 30.0, 0.0, mem, params,
                        {"precision": "fp32"}, work.notes + " (time: text encoding and solves, well under a minute)")
    scope = cost.scope_params
    mem["reference copy of scope"] = 4 * scope / GIB
    mem["gradients"] = 4 * scope / GIB
    mem["optimizer state"] = (2 if opt == "adam8bit" else 8) * scope / GIB
    if method == "trce":  # stage 2's "original model" reference also holds the pre-stage-1 K/V weights
        mem["stage-1 K/V reference"] = 4 * unet_cost(spec.unet, "cross_attn_kv").scope_params / GIB
    if work.masked_updates:
        mem["saliency masks"] = scope / GIB  # one bool per trained entry
    if work.masked_updates == "dynamic":
        mem["masked-step copies"] = 12 * scope / GIB  # weights and both Adam moments, float32
    if work.double_backward:  # the whole graph of the gradient, forward with math attention
        act = double_backward_saved_bytes(spec.unet, work.scope)
    else:
        act = cost.saved_bytes_checkpointed if gc_on else cost.saved_bytes
    act *= work.train_batch
    if precision in ("bf16", "fp16"):
        act /= 2
        mem["bf16 weight cache"] = 2 * scope / GIB
    mem["activations"] = act / GIB
    mem["cuda overhead"] = CUDA_OVERHEAD_BYTES / GIB
    peak = sum(mem.values())
    grad_flops = cost.forward_flops + cost.backward_flops * (2 if work.double_backward else 1)
    if gc_on:
        grad_flops += cost.forward_flops  # recompute
    per_iter = work.nograd_per_iter * cost.forward_flops + work.grad_per_iter * grad_flops
    train_s = work.iterations * per_iter / flops
    setup_s = (work.setup_nograd * cost.forward_flops + work.setup_grad * grad_flops) / flops
    settings = {"iterations": work.iterations, "scope": work.scope, "train_batch": work.train_batch,
                "gradient_checkpointing": gc_on, "mixed_precision": precision, "optimizer": opt}
    return Estimate(method, spec.name, gpu_memory_gib, peak, peak <= gpu_memory_gib, train_s, setup_s, mem, params,
                    settings, work.notes)


def fitting_settings(method: str, model: str, gpu_memory_gib: float = 24.0, kind: str = "object",
                     config=None) -> Estimate:
    """The cheapest settings that fit: plain fp32, then + checkpointing, + bf16, + 8-bit Adam.

    Saliency-masked methods stop before 8-bit Adam: their masked step restores Adam's moments entry
    by entry, which blockwise-quantised moments do not allow (they refuse ``optimizer="adam8bit"``).
    """
    ladder = [dict(gradient_checkpointing=False, mixed_precision="no", optimizer="adam"),
              dict(gradient_checkpointing=True, mixed_precision="no", optimizer="adam"),
              dict(gradient_checkpointing=True, mixed_precision="bf16", optimizer="adam")]
    if not method_work(method, config, kind=kind).masked_updates:
        ladder.append(dict(gradient_checkpointing=True, mixed_precision="bf16", optimizer="adam8bit"))
    last = None
    for option in ladder:
        last = estimate(method, model, config=config, kind=kind, gpu_memory_gib=gpu_memory_gib, **option)
        if last.fits:
            return last
    return last  # type: ignore[return-value]
