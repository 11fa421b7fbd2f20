"""ESD — Erased Stable Diffusion (Gandikota et al.), baseline fine-tuning by negative guidance.

Each iteration samples a target prompt ``c`` (``prompts``: the concept string
alone, as the authors' code, or the synonym x template grid) and a step ``s`` uniformly among the ``n_steps`` DDIM steps, generates the
latent ``z_s`` with the model BEING EDITED (current weights, no grad, CFG
``guidance`` on ``c``), and regresses the edited model's prediction onto the
negatively guided output of the frozen original model:

    L = || eps*(z_s, c, t) - [eps(z_s, "") - g (eps(z_s, c) - eps(z_s, ""))] ||^2,   g = 1

(mean over elements), t the timestep of step s (``pairing="release"``: the
paper-era code's latent and timestep, `release_pairing`).  Variants differ only in the parameter scope:
``esd-x`` trains cross-attention (``cross_attn``), ``esd-u`` everything else
(``non_cross_attn_paper`` as the paper's code, or the diffusers port's
``non_cross_attn``; `ESDConfig.u_scope`).  Defaults are the paper's: Adam lr 1e-5,
1000 iterations, DDIM 50 steps, generation CFG 3.  Differences from the
authors' code: docs/faithfulness.md.
"""

from __future__ import annotations

import math
from functools import partial
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..concepts.spec import ConceptSpec
from ..models.conditioning import cat_conditions, encode_conditions, expand_condition
from ..models.ddim import DDIMSampler
from ..models.delta import WeightDelta
from ..models.scopes import ParameterScope, list_scopes, register_scope
from ..models.unet_io import initial_latents, predict, require_supported_unet
from ..training import FineTuneConfig, Trainer, fine_tune, randint
from .base import MethodSpec, MethodWork, register
from .retain import KVRetainTerm, RetainFields, RetainTerm
from .losses import esd_target

VARIANT_SCOPES = {"esd-x": "cross_attn", "esd-u": "non_cross_attn"}
# esd-u's scope in the paper's code (CompVis names: not 'attn2', not 'time_embed', not 'out.').
PAPER_U_SCOPE = "non_cross_attn_paper"
_PAPER_U_EXCLUDED = ("time_embedding.", "add_embedding.", "conv_norm_out.", "conv_out.")
if PAPER_U_SCOPE not in list_scopes():
    register_scope(ParameterScope(
        PAPER_U_SCOPE, lambda s: s.attn_kind != "cross" and not s.name.startswith(_PAPER_U_EXCLUDED),
        "every parameter outside cross-attention, the time embedding and the output layers (ESD-u, paper)"))


def variant_scope(config: "ESDConfig", variant: str) -> str:
    """The scope a variant trains: ``config.scope``, else esd-x's cross-attention or esd-u's ``u_scope``."""
    if config.scope:
        return config.scope
    if variant == "esd-u" and config.u_scope == "paper":
        return PAPER_U_SCOPE
    return VARIANT_SCOPES[variant]


_BARE = {"target": lambda c: c.canonical, "anchor": lambda c: c.anchor_for(c.canonical), "unnamed": lambda c: ""}
_GRID = {"target": ConceptSpec.target_prompts, "anchor": ConceptSpec.anchor_prompts, "unnamed": ConceptSpec.unnamed_prompts}


def training_prompts(concept: ConceptSpec, prompts: str, n_synonyms: int | None, n_templates: int | None,
                     role: Literal["target", "anchor", "unnamed"] = "target") -> list[str]:
    """"bare": the concept string alone (the authors' code); "grid": synonyms x templates.

    ``role`` "anchor" / "unnamed": the same prompts, in the same order, with the target word replaced by
    its anchor / left out.
    """
    if prompts == "bare":
        return [_BARE[role](concept)]
    if prompts == "grid":
        return _GRID[role](concept, n_synonyms, n_templates)
    raise ValueError(f"unknown prompts {prompts!r} (bare or grid)")


SHAPES_PRESET = {"iterations": 150, "lr": 1e-4, "n_steps": 25, "negative_guidance": 3.0, "prompts": "grid",
                 "u_scope": "port"}
# esd-u's ``shapes-retain`` preset adds these to the shapes preset (see `ESDConfig`'s docstring).
SHAPES_RETAIN = {"iterations": 300, "lr_schedule": "cosine", "preserve_weight": 12.0, "preserve_pool_size": 32,
                 "preserve_batch": 16, "sample_batch": 4}


class ESDConfig(FineTuneConfig, RetainFields):
    """Paper defaults (SD-1.4): 1000 iterations, Adam lr 1e-5, DDIM 50 steps, CFG 3, g = 1.

    ``prompts``: "bare" (the SD default, as the authors' code: the concept string alone)
    or "grid" (every synonym in every template, ``n_synonyms`` x ``n_templates``).
    ``u_scope`` (esd-u): "paper" (the paper's code: every parameter outside cross-attention,
    the time embedding and the output layers, norms included) or "port" (the later
    diffusers port: every Linear/Conv outside cross-attention, time embedding and
    ``conv_out`` included).  ``scope`` overrides both variants' scopes.

    The ``shapes`` preset (a ~10M-parameter UNet with 16x16 latents, erased on a CPU):
    lr 1e-4 for 150 iterations, 25 DDIM steps (how that model is sampled), negative
    guidance 3 (at g = 1 the target only reaches the unconditional model, which draws
    the concept at chance), the synonym x template grid and the port's scope.
    ``shapes-retain`` (esd-u) adds the retain term below over a batch of 16 pooled
    latents at weight 12, 4 ESD samples per step and a cosine decay over 300 iterations,
    since esd-u's edit outside cross-attention moves every prompt and the retain term holds the
    others.  Measurements: docs/experiments/esd.md.

    Options beyond the paper (off at their defaults):

    - the shared retain fields (`erasekit.methods.retain.RetainFields`): ``preserve_weight``
      and its pool, batch and latents; ``preserve_kv_weight`` (K/V held; esd-x only);
    - ``step_range`` (lo, hi): sample the DDIM step from the fraction [lo, hi) of the steps;
    - ``sample_batch`` B: B prompts and latents per iteration at one shared step, loss averaged
      (B = 1 is ESD's single-sample loop, draw for draw);
    - ``pairing="release"``: the paper-era code's latent and timestep (`release_pairing`).
    """

    iterations: int = 1000
    lr: float = 1e-5
    n_steps: int = Field(50, description="DDIM steps of the sampled trajectory; the training step is drawn among them")
    guidance: float = Field(3.0, description="CFG scale the edited model generates the training latent with")
    negative_guidance: float = Field(1.0, description="g in the target eps(z,'') - g (eps(z,c) - eps(z,''))")
    prompts: Literal["bare", "grid"] = Field(
        "bare", description="'bare': the concept string alone (authors' code); 'grid': synonyms x templates")
    u_scope: Literal["paper", "port"] = Field(
        "paper", description="esd-u's scope: 'paper' (CompVis code) or 'port' (the diffusers port's)")
    n_synonyms: int | None = Field(None, description="grid prompts: synonyms used (None: all)")
    n_templates: int | None = Field(None, description="grid prompts: templates used (None: all)")
    step_range: tuple[float, float] = Field(
        (0.0, 1.0), description="the fraction [lo, hi) of the DDIM steps the training step is drawn from")
    sample_batch: int = Field(1, description="prompts and latents per iteration at one shared step")
    pairing: Literal["matched", "release"] = Field(
        "matched", description="'matched': the loss at the latent's own timestep (paper); 'release': the "
                               "paper-era code's latent and DDPM timestep, 39-58 timesteps apart at 50 steps")

    EXTENSIONS: ClassVar[tuple[str, ...]] = ("step_range", "sample_batch", "pairing")
    PRESETS: ClassVar[dict] = {"shapes": SHAPES_PRESET, "shapes-retain": {**SHAPES_PRESET, **SHAPES_RETAIN}}


class ESDXConfig(ESDConfig):
    """esd-x's config: ESD's fields and SD defaults; its own Shapes preset.

    The ``shapes`` preset trains only the cross-attention keys and values at lr 1e-3 with
    the kept prompts' keys and values held (``preserve_kv_weight = 0.03``): with ESD's
    preset a colour cannot go without its neighbour, while this one erases a shape and a
    colour with the rest kept (docs/experiments/esd.md).
    """

    PRESETS: ClassVar[dict] = {
        "shapes": {**SHAPES_PRESET, "scope": "cross_attn_kv", "lr": 1e-3, "preserve_kv_weight": 0.03},
    }


def sampled_steps(n_steps: int, step_range: tuple[float, float]) -> range:
    """The DDIM steps ESD samples from: [floor(lo n), ceil(hi n)) of ``n_steps`` (step 0 is the noisiest)."""
    lo, hi = step_range
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"step_range must satisfy 0 <= lo < hi <= 1, got {step_range}")
    first, stop = math.floor(lo * n_steps + 1e-9), math.ceil(hi * n_steps - 1e-9)
    return range(first, max(stop, first + 1))


def release_pairing(t_enc: int, n_steps: int, train_timesteps: int = 1000) -> tuple[int, tuple[int, int]]:
    """The paper-era code's pairing for its draw ``t_enc`` in 0..n-1: (DDIM steps run, DDPM timestep range).

    Its sampler stops after the step of index ``t_enc - 1`` (indices count from the clean end; 0 and 1
    both run every step), so the latent is the one after ``n + 1 - t_enc`` steps (at most n), while
    the model is given a timestep drawn in ``[round(T t_enc / n), round(T (t_enc + 1) / n))``:
    at 50 steps, 39 to 58 timesteps noisier than the latent.
    """
    if not 0 <= t_enc < n_steps:
        raise ValueError(f"t_enc must be in 0..{n_steps - 1}, got {t_enc}")
    lo, hi = round(train_timesteps * t_enc / n_steps), round(train_timesteps * (t_enc + 1) / n_steps)
    return min(n_steps, n_steps + 1 - t_enc), (lo, hi)


class ESDStep:
    """One ESD iteration: partial generation with the edited model, frozen targets, MSE."""

    def __init__(self, pipe, trainer: Trainer, concept: ConceptSpec, config: ESDConfig):
        self.unet, self.trainer, self.config = pipe.unet, trainer, config
        if config.sample_batch < 1:
            raise ValueError(f"sample_batch must be >= 1, got {config.sample_batch}")
        self.prompts = training_prompts(concept, config.prompts, config.n_synonyms, config.n_templates)
        self.embeds = encode_conditions(pipe, self.prompts)
        self.uncond = encode_conditions(pipe, [""])
        self.sampler = DDIMSampler(pipe.scheduler, config.n_steps)
        self.steps = sampled_steps(config.n_steps, config.step_range)
        if config.pairing == "release" and tuple(config.step_range) != (0.0, 1.0):
            raise ValueError("pairing='release' draws the paper-era code's step over every step; "
                             "leave step_range at (0, 1)")
        self.train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
        self.retain = RetainTerm.from_config(pipe, trainer, concept, config)
        self.retain_kv = KVRetainTerm.from_config(pipe, trainer, concept, config)

    def __call__(self, step: int, g: torch.Generator) -> torch.Tensor:
        cfg = self.config
        picks = torch.tensor([randint(len(self.prompts), g) for _ in range(cfg.sample_batch)])
        s = self.steps[randint(len(self.steps), g)]
        if cfg.pairing == "release":  # s is the paper-era code's t_enc
            s, (lo, hi) = release_pairing(s, cfg.n_steps, self.train_timesteps)
            t = lo + randint(hi - lo, g)
        cond = self.embeds[picks]
        z = self.sampler.denoise(self.unet, initial_latents(self.unet, g, cfg.sample_batch), 0, s, cond,
                                 self.uncond, cfg.guidance)
        if cfg.pairing != "release":
            t = self.sampler.timestep(s)
        with self.trainer.reference():
            uncond = expand_condition(self.uncond, cfg.sample_batch)
            eps_c, eps_u = predict(self.unet, torch.cat([z, z]), t, cat_conditions([cond, uncond])).chunk(2)
        target = esd_target(eps_c, eps_u, cfg.negative_guidance)
        loss = F.mse_loss(predict(self.unet, z, t, cond), target)
        if self.retain is not None:
            loss = loss + cfg.preserve_weight * self.retain(g)
        if self.retain_kv is not None:
            loss = loss + cfg.preserve_kv_weight * self.retain_kv()
        return loss


def erase(pipe, concept: ConceptSpec, config: ESDConfig, variant: str = "esd-x") -> WeightDelta:
    require_supported_unet(pipe.unet, variant)
    scope = variant_scope(config, variant)
    return fine_tune(pipe, concept, config, variant, scope, config.iterations,
                     lambda trainer: ESDStep(pipe, trainer, concept, config), scope_name=scope)


erase_x = partial(erase, variant="esd-x")
erase_u = partial(erase, variant="esd-u")

def _work(spec: MethodSpec, config: ESDConfig, kind: str) -> MethodWork:
    # partial generation to a uniform step s in 0..n-1 (mean (n-1)/2 CFG steps of 2), frozen reference 2
    return MethodWork(spec.name, spec.scope_for(config, kind), config.iterations, (config.n_steps - 1) + 2, 1, 1)


register(MethodSpec("esd-x", ESDXConfig, erase_x, "ESD negative-guidance fine-tuning of cross-attention",
                    family="fine-tune", default_scope=VARIANT_SCOPES["esd-x"], work=_work, quick={"iterations": 30}))
register(MethodSpec("esd-u", ESDConfig, erase_u, "ESD negative-guidance fine-tuning outside cross-attention",
                    family="fine-tune", default_scope=lambda c: variant_scope(c, "esd-u"), work=_work, quick={"iterations": 30}))
