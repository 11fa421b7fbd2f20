"""DDIM sampling with classifier-free guidance on a copy of a pipeline's scheduler.

The scheduler reads its own ``prediction_type``, so epsilon and v models sample alike.
"""

from __future__ import annotations

import torch

from .conditioning import cat_conditions, expand_condition
from .unet_io import predict


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

