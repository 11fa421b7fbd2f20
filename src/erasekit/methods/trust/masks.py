"""Masked optimiser steps: Adam changes only the entries inside the current saliency mask.

`MaskedUpdates` hooks the trainer's optimiser (global ``torch.optim`` step hooks,
active only while entered and only for the optimiser that owns the scope
parameters): before each step it multiplies the gradients by the current mask and
snapshots the parameters and Adam moments; after the step it restores every
entry outside the mask, parameter AND moments ("lazy" Adam).  So Adam's momentum
from an earlier mask cannot move an entry that has left the mask, an entry's
moments only evolve while it is masked, and the final delta is exactly zero
outside the union of all masks.

Only tensors that need it are snapshotted: an entry whose gradient is masked to
zero and whose Adam moments are both zero is left exactly as it is by Adam
without weight decay, so a tensor with no nonzero moment outside its current
mask (every tensor under a static mask, as in SalUn) is stepped without a copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


class MaskedUpdates:
    """While active, the optimiser that owns ``params`` only changes masked entries (see the module docstring).

    ``masks()`` returns the current masks by parameter name (None or a
    missing name: nothing of that tensor may change).
    """

    def __init__(self, params: Mapping[str, nn.Parameter], masks: Callable[[], Mapping[str, torch.Tensor] | None]):
        self.params, self.masks = dict(params), masks
        self._ids = {id(p) for p in self.params.values()}
        self._saved: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "MaskedUpdates":
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles = [register_optimizer_step_pre_hook(self._pre), register_optimizer_step_post_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._saved = [], {}

    def _ours(self, optimizer) -> bool:
        return any(id(p) in self._ids for g in optimizer.param_groups for p in g["params"])

    def _mask(self, name: str) -> torch.Tensor | None:
        masks = self.masks()
        return None if masks is None else masks.get(name)

    @torch.no_grad()
    def _pre(self, optimizer, args, kwargs) -> None:
        if not self._ours(optimizer):
            return
        self._saved = {}
        decays = any(g.get("weight_decay", 0) != 0 for g in optimizer.param_groups)  # moves unmasked entries too
        for n, p in self.params.items():
            m = self._mask(n)
            if p.grad is not None:
                if m is None:
                    p.grad.zero_()
                else:
                    p.grad.mul_(m.to(p.grad.dtype))
            state = optimizer.state.get(p, {})
            moments = {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape}
            if decays or any(bool(((v != 0) if m is None else (v != 0) & ~m).any()) for v in moments.values()):
                self._saved[n] = (p.detach().clone(), {k: v.detach().clone() for k, v in moments.items()})

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        if not self._ours(optimizer) or not self._saved:
            return
        for n, p in self.params.items():
            if n not in self._saved:
                continue
            old, moments = self._saved[n]
            m = self._mask(n)
            keep = torch.zeros_like(p, dtype=torch.bool) if m is None else m
            p.copy_(torch.where(keep, p, old))
            state = optimizer.state.get(p, {})
            for k, v in moments.items():
                state[k].copy_(torch.where(keep, state[k], v))
        self._saved = {}
