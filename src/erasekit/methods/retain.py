"""Keeping what must stay: a pool of the original model's latents, and the retain loss on kept prompts.

Fine-tuning methods that erase with a loss on the target prompts alone (ESD's
negative guidance, KSCU) have nothing that holds other prompts in place; on a
colour, pushing "a red shape" away also moves the shared "coloured shape"
direction the other colours use.  The retain loss regresses the edited model
onto the frozen original on prompts that must keep working::

    L_r = || eps*(x_t, c_keep, t) - eps(x_t, c_keep, t) ||^2        (mean over elements)

``x_t`` is a finished latent of the ORIGINAL model on ``c_keep`` (generated
once, DDIM at CFG, like SalUn's retain set), noised to a uniformly random
training timestep with fresh noise.  TRuST/SalUn use the same pool for their
forget set and retain term.  With ``latents="partial"`` the retain term instead
takes ``x_t`` the way ESD takes its own: the model BEING EDITED denoises fresh
noise on ``c_keep`` down to a uniformly random DDIM step (no grad), so the kept
prompts are held on the trajectories the edited model actually follows, not
only on the original model's.  Costs one partial generation per iteration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..concepts.spec import ConceptSpec
from ..models.conditioning import TextCondition, cat_conditions, encode_conditions
from ..models.ddim import DDIMSampler
from ..models.unet_io import initial_latents, predict
from ..training import MethodConfig, Trainer, randint, step_generator


class RetainFields(MethodConfig):
    """The retain options a fine-tuning config mixes in (ESD, KSCU); all off at their defaults.

    ``preserve_weight`` > 0 turns on `RetainTerm` on the concept's kept prompts
    (``preserve_pool_size`` pooled latents, ``preserve_batch`` per iteration, ``preserve_latents``
    where they come from); ``preserve_kv_weight`` > 0 turns on `KVRetainTerm` (the kept prompts'
    cross-attention keys and values held in place; needs text K/V in the scope).  The fields are
    `EXTENSIONS`: left out of a config's fingerprint while at their defaults.
    """

    preserve_weight: float = Field(0.0, description="weight of the retain term on the kept prompts (noise space)")
    preserve_pool_size: int = Field(8, description="retain term: kept-prompt latents pooled")
    preserve_batch: int = Field(1, description="retain term: pooled latents per iteration")
    preserve_latents: Literal["pool", "partial"] = Field(
        "pool", description="retain latents: the original model's pooled ones, or partial generations of the edited model")
    preserve_kv_weight: float = Field(
        0.0, description="weight holding the kept prompts' cross-attention K/V in place (needs K/V in scope)")

    EXTENSIONS: ClassVar[tuple[str, ...]] = ("preserve_weight", "preserve_pool_size", "preserve_batch",
                                             "preserve_latents", "preserve_kv_weight")


def kept_prompts(concept: ConceptSpec, include_preserve: bool = True, n_templates: int | None = None) -> list[str]:
    """The prompts a retain term keeps: ``retain_prompts()`` (combinations, conditions), then ``preserve``."""
    prompts = list(concept.retain_prompts(n_templates))
    if include_preserve:
        prompts += list(concept.preserve)
    return list(dict.fromkeys(p for p in prompts if p))


class LatentPool:
    """``size`` finished latents of the original model on ``embeds`` (prompts cycled in a seeded order)."""

    def __init__(self, unet, trainer: Trainer, sampler: DDIMSampler, embeds: TextCondition, uncond: TextCondition,
                 size: int, guidance: float, seed: int, salt: int, chunk: int = 8):
        g = step_generator(seed, salt)
        order = torch.randperm(len(embeds), generator=g).tolist()
        self.index = [order[i % len(order)] for i in range(size)]
        self.scheduler = sampler.scheduler
        self.train_timesteps = int(sampler.scheduler.config.num_train_timesteps)
        out = []
        with trainer.reference():
            for i in range(0, size, chunk):
                part = self.index[i : i + chunk]
                z = initial_latents(unet, g, batch=len(part))
                out.append(sampler.denoise(unet, z, 0, sampler.n_steps, embeds[part], uncond, guidance))
        self.latents = torch.cat(out)

    def draw(self, g: torch.Generator) -> tuple[torch.Tensor, int, int]:
        """(x_t, t, prompt index): one pooled latent, a uniform timestep, fresh noise."""
        j = randint(len(self.index), g)
        t = randint(self.train_timesteps, g)
        x0 = self.latents[j : j + 1]
        noise = torch.randn(x0.shape, generator=g).to(x0)
        return self.scheduler.add_noise(x0, noise, torch.tensor([t], device=x0.device)), t, self.index[j]


class RetainTerm:
    """L_r on ``prompts`` (see the module docstring); call with the step's generator."""

    def __init__(self, pipe, trainer: Trainer, prompts: list[str], pool_size: int, n_steps: int, guidance: float,
                 seed: int, salt: int = -2, latents: Literal["pool", "partial"] = "pool", batch: int = 1):
        if batch < 1:
            raise ValueError(f"the retain batch must be >= 1, got {batch}")
        if not prompts:
            raise ValueError("the retain term needs at least one prompt to keep")
        if latents not in ("pool", "partial"):
            raise ValueError(f"retain latents are 'pool' or 'partial', got {latents!r}")
        self.unet, self.trainer, self.prompts = pipe.unet, trainer, prompts
        self.embeds = encode_conditions(pipe, prompts)
        self.uncond = encode_conditions(pipe, [""])
        self.sampler = DDIMSampler(pipe.scheduler, n_steps)
        self.guidance, self.batch = guidance, batch
        self.pool = (LatentPool(pipe.unet, trainer, self.sampler, self.embeds, self.uncond, pool_size, guidance, seed,
                                salt) if latents == "pool" else None)

    @classmethod
    def from_config(cls, pipe, trainer: Trainer, concept: ConceptSpec, config) -> "RetainTerm | None":
        """The term a method config asks for (``preserve_weight`` > 0), or None."""
        if config.preserve_weight <= 0:
            return None
        return cls(pipe, trainer, kept_prompts(concept), config.preserve_pool_size, config.n_steps, config.guidance,
                   config.seed, latents=config.preserve_latents, batch=config.preserve_batch)

    def draw(self, g: torch.Generator) -> tuple[torch.Tensor, int, int]:
        """(x_t, t, prompt index) from the pool, or from a partial generation of the edited model."""
        if self.pool is not None:
            return self.pool.draw(g)
        j = randint(len(self.prompts), g)
        s = randint(self.sampler.n_steps, g)
        cond = self.embeds[j : j + 1]
        z = self.sampler.denoise(self.unet, initial_latents(self.unet, g), 0, s, cond, self.uncond, self.guidance)
        return z, self.sampler.timestep(s), j

    def __call__(self, g: torch.Generator) -> torch.Tensor:
        """The loss on ``batch`` draws (one batched prediction; the mean over every element)."""
        draws = [self.draw(g) for _ in range(self.batch)]
        z = torch.cat([d[0] for d in draws])
        t = torch.tensor([d[1] for d in draws], device=z.device) if self.batch > 1 else draws[0][1]
        cond = cat_conditions([self.embeds[j : j + 1] for _, _, j in draws])
        with self.trainer.reference():
            ref = predict(self.unet, z, t, cond)
        return F.mse_loss(predict(self.unet, z, t, cond).float(), ref.float())


def kv_drift(params: Mapping[str, torch.Tensor], originals: Mapping[str, torch.Tensor],
             tokens: torch.Tensor) -> torch.Tensor:
    """Relative change of the cross-attention keys and values of ``tokens`` (N, D), summed over K/V tensors.

    ``sum_W ||(W - W0) E^T||^2 / ||W0 E^T||^2`` over every ``to_k``/``to_v`` weight whose input is the text
    embedding: what the retain prompts hand the UNet, held in place directly (UCE's preservation
    moment, as a loss) rather than through the noise prediction.
    """
    return kv_forget(params, originals, tokens, tokens)  # the tokens' own original keys and values


def text_kv_names(params: Mapping[str, torch.Tensor], width: int) -> list[str]:
    """The cross-attention (``attn2``) ``to_k``/``to_v`` weights among ``params`` that read text embeddings
    of ``width``; a self-attention K/V of the same width (the Shapes model's 128-channel blocks) is not one."""
    return [n for n, w in params.items()
            if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) and w.shape[-1] == width]


def kv_forget(params: Mapping[str, torch.Tensor], originals: Mapping[str, torch.Tensor],
              sources: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """How far the sources' cross-attention keys and values are from the anchors' original ones.

    ``sum_W ||W S^T - W0 A^T||^2 / ||W0 A^T||^2`` over every text ``to_k``/``to_v`` weight, with
    ``sources`` and ``anchors`` (N, D) paired row by row (the same token position of a target prompt
    and of its anchor prompt): UCE's source term written as a loss, zero when every source token
    produces the key and value the anchor token produced in the original model.
    """
    total = sources.new_zeros(())
    for name in text_kv_names(params, sources.shape[-1]):
        goal = anchors @ originals[name].to(anchors).T
        total = total + (sources @ params[name].float().T - goal).pow(2).sum() / goal.pow(2).sum().clamp_min(1e-12)
    return total


class KVMatchLoss:
    """`kv_forget` for fixed token sets, computed from their second moments: O(D^2) per weight, not O(N D).

    With ``Δ = W - W0`` and ``R = S - A``::

        ||W S^T - W0 A^T||^2 = <Δ S^T S, Δ> + 2 <Δ, W0 R^T S> + ||W0 R^T||^2

    so the token matrices (N, D) enter only through ``S^T S``, ``R^T S`` and ``R^T R`` (D, D),
    accumulated once in float64.  A training step then costs one (out, D) x (D, D) product per weight
    whatever the number of prompts, where `kv_forget` multiplies every token through every weight
    (N = prompts x 77 positions).  Written in ``Δ`` there is no cancellation near the optimum, and the
    drift (``anchors`` None: `kv_drift`) is exactly zero at the original weights.  Equal to
    `kv_forget`'s value (tested).
    """

    def __init__(self, originals: Mapping[str, torch.Tensor], names: list[str], sources: torch.Tensor,
                 anchors: torch.Tensor | None = None):
        if not names:
            raise ValueError("a K/V loss needs cross-attention to_k/to_v weights that read the text; none given")
        s = sources.detach().double().cpu()
        r = None if anchors is None else s - anchors.detach().double().cpu()
        if r is not None and anchors.shape != sources.shape:
            raise ValueError(f"sources {tuple(sources.shape)} and anchors {tuple(anchors.shape)} must pair row by row")
        ss = s.T @ s
        self.names, self.originals = list(names), originals
        self.gram, self.linear, self.offset, self.scale = {}, {}, {}, {}
        for name in self.names:
            w0 = originals[name].detach().double().cpu()
            device = originals[name].device
            self.gram[name] = ss.to(device, torch.float32)
            if r is None:  # drift: the goal is the tokens' own original keys and values
                goal = ((w0 @ ss) * w0).sum()
            else:
                goal = ((w0 @ (s - r).T) ** 2).sum()  # ||W0 A^T||^2
                self.linear[name] = (w0 @ (r.T @ s)).to(device, torch.float32)
                self.offset[name] = float(((w0 @ r.T) ** 2).sum())
            self.scale[name] = float(goal.clamp_min(1e-12))

    def __call__(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for name in self.names:
            d = params[name].float() - self.originals[name].float()
            value = ((d @ self.gram[name]) * d).sum()
            if name in self.linear:
                value = value + 2 * (d * self.linear[name]).sum() + self.offset[name]
            total = value / self.scale[name] if total is None else total + value / self.scale[name]
        return total


class KVRetainTerm:
    """``kv_drift`` of the kept prompts' tokens: their cross-attention keys and values held in place.

    Every token of every kept prompt, as the K/V projections see it; the
    scope must contain K/V weights that read the text (an error otherwise,
    rather than a term that is silently zero).
    """

    def __init__(self, pipe, trainer: Trainer, prompts: list[str]):
        if not prompts:
            raise ValueError("the K/V retain term needs at least one prompt to keep")
        embeds = encode_conditions(pipe, prompts).embeds
        tokens = embeds.reshape(-1, embeds.shape[-1]).float()
        self.trainer = trainer
        names = text_kv_names(trainer.params, tokens.shape[-1])
        if not names:
            raise ValueError("the K/V retain term needs cross-attention to_k/to_v weights in the scope "
                             "(e.g. esd-x's cross_attn); this scope has none")
        self.drift = KVMatchLoss(trainer.originals, names, tokens)

    @classmethod
    def from_config(cls, pipe, trainer: Trainer, concept: ConceptSpec, config) -> "KVRetainTerm | None":
        """The term a method config asks for (``preserve_kv_weight`` > 0), or None."""
        if getattr(config, "preserve_kv_weight", 0.0) <= 0:
            return None
        return cls(pipe, trainer, kept_prompts(concept))

    def __call__(self) -> torch.Tensor:
        return self.drift(self.trainer.params)
