"""SalUn (Fan et al., ICLR 2024): `SalUnConfig`, `SalUnStep`; and `SalUnPlusPlusConfig`, TRuST's Figure 1 baseline.

SalUn fine-tunes only the entries of a saliency mask fixed before training
(TRuST's static case, sharing its trainer and masked Adam steps).  The SD
preset follows the paper and, where it is silent, the authors' release
(OPTML-Group/Unlearn-Saliency, ``SD/``):

- saliency (``saliency_loss="diffusion"``): the gradient, at the original
  weights, of the diffusion loss ``|| (1 + w) eps(x_t, c) - w eps(x_t, "") - eps ||^2``
  (``w = saliency_guidance``, 7.5) on each forget-set latent once (the pool of
  ``pool_size`` generations of the original model, taken in order, at a uniform
  timestep with fresh noise ``eps``), summed over the set;
- mask: the top ``topk`` = 50% of ``|g|`` ranked over every UNet parameter
  (``scope="all"``, ``mask_granularity="global"``);
- forgetting loss ``|| eps*(x_t, c) - sg[eps*(x_t, c_anchor)] ||^2`` with the pseudo-target
  from the model being trained (``pseudo_target="current"``), as the paper's Eq. 7;
- retain term (``gamma`` 0.5, the release's alpha) on the concept's kept prompts including its
  preserve list (``retain_preserve``), the diffusion loss against the noise (``retain_target="noise"``).

One setting away, erasekit's earlier SalUn (the Shapes preset): the configured ``scorer`` on
``saliency_samples`` draws (``saliency_loss="forget"``), a per-tensor ``xi`` threshold on
cross-attention q/k/v, the frozen original as pseudo-target (``"original"``), and the retain
term, against the frozen original, only for combinations and conditions.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ...models.conditioning import cat_conditions
from ...models.unet_io import predict
from ...training import randint
from ..losses import diffusion_target
from .config import TRuSTConfig
from .step import TrustStep

# erasekit's behaviour before these options existed: at these values a field is left out of the
# fingerprint, so results measured then (the Shapes cells) stay current.
LEGACY = {"saliency_loss": "forget", "pseudo_target": "original", "retain_target": "original"}
# The erasekit settings (the Shapes preset and SalUn++ keep them).
ERASEKIT = {"scope": None, "topk": None, "mask_granularity": "tensor", "retain_preserve": False, "gamma": 1.0,
            **LEGACY}


class SalUnConfig(TRuSTConfig):
    """SalUn's SD preset (the paper, then the release): see the module docstring for each setting.

    Static mask from 16 forget-set latents (the pool), lr 1e-5 as SalUn, 1000
    iterations (batch 1).  The ``shapes`` preset keeps erasekit's SalUn (cross-attention
    q/k/v, per-tensor ``xi`` mask, frozen pseudo-target, retain term for combinations and
    conditions only), lr 1e-3, 150 iterations: the Shapes table compares SalUn with
    TRuST as its static case, so there the two differ only in the mask schedule and the
    regulariser.  Measurements: docs/experiments/trust.md.
    """

    iterations: int = 1000
    scope: str | None = "all"
    scorer: str = "forget"
    saliency_samples: int = 16
    topk: float | None = 0.5
    mask_granularity: Literal["tensor", "global"] = "global"
    mask_every: int | None = 0
    mask_unit: Literal["neuron", "entry"] = "entry"
    saliency_momentum: float = 0.0
    regularizer: Literal["csr", "cip", "cip+csr", "none"] = "none"
    gamma: float = 0.5
    retain_preserve: bool = True
    saliency_loss: Literal["diffusion", "forget"] = Field(
        "diffusion", description="mask saliency: the guided diffusion loss on the forget set, each latent once "
                                 "in order (release), or the configured scorer (erasekit)")
    saliency_guidance: float = Field(7.5, description="w of the saliency's guided prediction (1 + w) eps_c - w eps_u")
    pseudo_target: Literal["current", "original"] = Field(
        "current", description="the anchor prediction of the model being trained (paper, release) or of the "
                               "frozen original")
    retain_target: Literal["noise", "original"] = Field(
        "noise", description="retain term against the noise (the diffusion loss, release) or the frozen original")

    PRESETS: ClassVar[dict] = {
        "shapes": {"iterations": 150, "lr": 1e-3, "n_steps": 25, "guidance": 3.0, "pool_size": 8,
                   "retain_pool_size": 8, "saliency_samples": 8, **ERASEKIT},
    }

    def fingerprint(self) -> dict[str, Any]:
        """As `MethodConfig.fingerprint`, less the SalUn options at erasekit's earlier values."""
        dump = super().fingerprint()
        for name, value in LEGACY.items():
            if dump.get(name) == value:
                dump.pop(name)
        if self.saliency_loss != "diffusion":
            dump.pop("saliency_guidance", None)  # unused
        return dump

    def release_parts(self) -> bool:
        """Whether a setting needs `SalUnStep` (TRuST's step runs the rest)."""
        return (self.saliency_loss, self.pseudo_target, self.retain_target) != ("forget", "original", "original")


class SalUnPlusPlusConfig(SalUnConfig):
    """SalUn++ (TRuST's Figure 1 baseline): erasekit's SalUn with its saliency map recomputed after every step.

    erasekit's SalUn settings (per-entry ``xi`` mask on cross-attention q/k/v from the
    forgetting loss's gradient, frozen pseudo-target, no regulariser) with ``mask_every=1``;
    each recomputation uses one sample (``saliency_samples=1``, the step's own cost scale;
    16 per step would make every iteration 16 gradient passes).  ``shapes`` preset: SalUn's.
    """

    mask_every: int | None = 1
    saliency_samples: int = 1
    scope: str | None = None
    topk: float | None = None
    mask_granularity: Literal["tensor", "global"] = "tensor"
    gamma: float = 1.0
    retain_preserve: bool = False
    saliency_loss: Literal["diffusion", "forget"] = "forget"
    pseudo_target: Literal["current", "original"] = "original"
    retain_target: Literal["noise", "original"] = "original"

    PRESETS: ClassVar[dict] = {"shapes": {**SalUnConfig.PRESETS["shapes"], "saliency_samples": 1}}


def noised_draw(pool, j: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) for pool latent ``j`` at a uniform timestep with fresh noise."""
    t = torch.tensor([randint(pool.train_timesteps, g)])
    x0 = pool.latents[j : j + 1]
    noise = torch.randn(x0.shape, generator=g).to(x0)
    t = t.to(x0.device)
    return pool.scheduler.add_noise(x0, noise, t), t, diffusion_target(pool.scheduler, x0, noise, t)


class SalUnStep(TrustStep):
    """TRuST's step with SalUn's released saliency, pseudo-target and retain target (module docstring)."""

    def __init__(self, pipe, trainer, concept, config: SalUnConfig, scorer, scorer_name: str = "forget",
                 mask_callback=None):
        unsupported = [n for n, on in (("a regulariser", config.regularizer != "none"),
                                       ("forget_loss='kv'", config.forget_loss != "noise"),
                                       ("retain_kv_weight", config.retain_kv_weight > 0),
                                       ("mask_contrast", config.mask_contrast > 0),
                                       ("retain_mask", config.retain_mask),
                                       ("stop_ratio", config.stop_ratio is not None)) if on]
        if unsupported:
            raise ValueError(f"SalUn's release settings do not combine with {', '.join(unsupported)}; "
                             "set saliency_loss='forget', pseudo_target='original', retain_target='original'")
        if config.latents != "pool":
            raise ValueError("SalUn's release settings train on the forget and retain sets: latents='pool'")
        super().__init__(pipe, trainer, concept, config, scorer, scorer_name, mask_callback)
        self.next_forget = 0  # the forget-set latent the saliency takes next

    def target_score(self, g: torch.Generator) -> torch.Tensor:
        """``saliency_loss="diffusion"``: the guided diffusion loss on the next forget-set latent."""
        if self.config.saliency_loss != "diffusion":
            return super().target_score(g)
        j = self.next_forget % len(self.pool.index)
        self.next_forget += 1
        z, t, target = noised_draw(self.pool, j, g)
        i = self.pool.index[j]
        eps_c, eps_u = predict(self.unet, torch.cat([z, z]), t,
                               cat_conditions([self.embeds[i : i + 1], self.uncond])).chunk(2)
        w = self.config.saliency_guidance
        return F.mse_loss(((1 + w) * eps_c - w * eps_u).float(), target.float())

    def __call__(self, step: int, g: torch.Generator) -> torch.Tensor:
        cfg = self.config
        if self.due(step):
            self.recompute_masks(step, g)
        z, t, cond, idx = self.draw_batch(g)
        anchors = cat_conditions([self.anchor_embeds[i : i + 1] for i in idx])
        if cfg.pseudo_target == "current":
            with torch.no_grad():
                ref = predict(self.unet, z, t, anchors)
        else:
            with self.trainer.reference():
                ref = predict(self.unet, z, t, anchors)
        l_forget = F.mse_loss(predict(self.unet, z, t, cond).float(), ref.float())
        loss, l_retain = l_forget, torch.zeros((), device=l_forget.device)
        if self.retain and cfg.gamma > 0:
            if cfg.retain_target == "noise":
                draws = [randint(len(self.retain_pool.index), g) for _ in range(cfg.retain_draws)]
                drawn = [(*noised_draw(self.retain_pool, k, g), self.retain_pool.index[k]) for k in draws]
                zr, tr, target = (torch.cat([d[n] for d in drawn]) for n in range(3))
                js = [d[3] for d in drawn]
                rcond = cat_conditions([self.retain_embeds[j : j + 1] for j in js])
            else:
                zr, tr, rcond, js = self.draw_batch(g, retain=True)
                with self.trainer.reference():
                    target = predict(self.unet, zr, tr, rcond)
            l_retain = F.mse_loss(predict(self.unet, zr, tr, rcond).float(), target.float())
            loss = loss + cfg.gamma * l_retain
            for j in js:
                self.retain_counts[j] += 1
        self.term_sums += torch.tensor([float(l_forget.detach()), float(l_retain.detach()), 0.0, 0.0],
                                       dtype=torch.float64)
        return loss

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "next_forget": torch.tensor(self.next_forget)}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.next_forget = int(state["next_forget"]) if "next_forget" in state else 0


def step_class(config: TRuSTConfig) -> type[TrustStep]:
    """`SalUnStep` for a SalUn config with any of its release settings, else `TrustStep`."""
    return SalUnStep if isinstance(config, SalUnConfig) and config.release_parts() else TrustStep
