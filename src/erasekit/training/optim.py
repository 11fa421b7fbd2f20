"""The optimiser and the learning-rate schedule of the trainer."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

log = logging.getLogger(__name__)


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


def make_optimizer(params: list[nn.Parameter], lr: float, kind: str, device: torch.device):
    """(optimizer, name actually used): torch Adam, AdamW (``kind='adamw'``), or bitsandbytes' 8-bit Adam (``'adam8bit'``).

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
    elif kind == "adamw":  # decoupled weight decay 0.01 (torch's default; the TRCE release's setting)
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01), "adamw"
    elif kind != "adam":
        raise ValueError(f"unknown optimizer {kind!r} (adam, adamw or adam8bit)")
    return torch.optim.Adam(params, lr=lr), "adam"

