"""The regression targets the fine-tuning methods train the UNet's prediction toward.

Each is a function of noise predictions at one latent and timestep (or of the noise itself);
the methods differ in which predictions they combine and with what weight:

- `esd_target`: ESD's negatively guided target, also KSCU's erase target and the AdvUnlearn
  hardening's;
- `kscu_targets`: KSCU's erase target and its timestep-weighted anchor target;
- `guided_target`: TRCE stage 2's positively guided predictions (paper or release form);
- `diffusion_target`: the plain denoising target (SalUn's retain and saliency losses).
"""

from __future__ import annotations

import torch


def esd_target(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, g: float) -> torch.Tensor:
    """Negatively guided target eps(z,"") - g (eps(z,c) - eps(z,""))."""
    return eps_uncond - g * (eps_cond - eps_uncond)


def kscu_targets(eps_c: torch.Tensor, eps_u: torch.Tensor, t: int, g: float,
                 lambda1_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(erase target `esd_target`, anchor target eps_u - lambda1(t) (eps_c - eps_u)),
    lambda1(t) = (1000 - t) * ``lambda1_rate``."""
    lambda1 = (1000 - t) * lambda1_rate
    return esd_target(eps_c, eps_u, g), eps_u - lambda1 * (eps_c - eps_u)


def guided_target(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, beta: float, form: str = "paper") -> torch.Tensor:
    """eps(z,"") + beta (eps(z,c) - eps(z,"")) (paper); ``form="release"``: eps(z,c) + beta (eps(z,c) - eps(z,""))."""
    base = eps_cond if form == "release" else eps_uncond
    return base + beta * (eps_cond - eps_uncond)


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict at ``t``: the noise, or v for v-prediction models."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return noise
