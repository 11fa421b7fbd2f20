"""Calling a diffusers UNet: latent shapes, seeded initial noise, one prediction for a batch.

`predict` returns the UNet output as-is, whether the model predicts epsilon or
v.  Every loss and target built on it (negative guidance, CFG,
guidance-enhanced targets) is a LINEAR combination of model outputs at the same
latent and timestep, and the map from epsilon to v at fixed ``(z, t)`` is
affine with the same coefficients for every output, so the combinations mean
the same thing for v-prediction models (squared errors are rescaled by a
per-timestep constant, nothing more).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .conditioning import Condition, TextCondition, uses_added_conditions


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

