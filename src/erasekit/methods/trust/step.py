"""One TRuST/SalUn iteration (`TrustStep`): mask refresh when due, forgetting loss, regulariser, retain term.

Where x_t comes from (the spec leaves it open): ``latents="pool"`` (default,
as SalUn) draws from a forget set of ``pool_size`` latents generated ONCE by the
original model (DDIM ``n_steps``, CFG ``guidance``) on the target prompts
(cycled in a seeded order) and, for the retain term, ``retain_pool_size``
latents on the retain prompts; each iteration picks one, a timestep ``t``
uniform in ``[0, num_train_timesteps)`` and fresh noise, and forms ``x_t`` with
the scheduler's forward process.  ``latents="partial"``: ESD-style, the
original model denoises fresh noise down to a uniformly random DDIM step s.
The pools are regenerated deterministically from the seed, so checkpoint
resume works; the masks, their union, the saliency running mean and the loss
sums are the step's checkpointed state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ...concepts.spec import ConceptSpec
from ...models.conditioning import cat_conditions, encode_conditions
from ...models.ddim import DDIMSampler
from ...models.unet_io import initial_latents, predict
from ...training import Trainer, randint
from ..losses import esd_target
from ..retain import KVMatchLoss, LatentPool, kept_prompts, text_kv_names
from ..saliency import (Scorer, ScoreSample, jaccard, mask_size, neuron_masks, neuron_scores, rows_to_entries,
                        saliency, saliency_masks)
from .config import TRuSTConfig
from .losses import (cip_penalty, contrast_saliency, csr_penalty, csr_penalty_fd, double_backward_attention,
                     summed)
from .stopping import StopRule, change_summary

MaskCallback = Callable[[int, dict[str, torch.Tensor]], None]
IMAGE_SCORERS = ("detector", "clip")  # scorers that read the decoded prediction, not the anchor reference


class _Predictor(torch.nn.Module):
    """``predict`` as a module call, so `torch.func.functional_call` can swap the UNet's weights for one call."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, z, t, cond):
        return predict(self.unet, z, t, cond)


def retain_prompt_list(concept: ConceptSpec, config: TRuSTConfig) -> list[str]:
    """Prompts whose predictions the retain term keeps: ``retain_prompts()`` (+ ``preserve``), deduplicated."""
    return kept_prompts(concept, config.retain_preserve, config.n_templates)


class TrustStep:
    """One TRuST/SalUn iteration (mask refresh when due, L_f + regulariser + retain); checkpointable state."""

    def __init__(self, pipe, trainer: Trainer, concept: ConceptSpec, config: TRuSTConfig, scorer: Scorer,
                 scorer_name: str = "forget", mask_callback: MaskCallback | None = None):
        self._cpu0 = time.process_time()
        self.pipe, self.unet, self.trainer, self.config = pipe, pipe.unet, trainer, config
        self.scorer, self.scorer_name, self.mask_callback = scorer, scorer_name, mask_callback
        self.params = trainer.params
        self.prompts = concept.target_prompts(config.n_synonyms, config.n_templates)
        self.anchors = concept.anchor_prompts(config.n_synonyms, config.n_templates)
        self.embeds = encode_conditions(pipe, self.prompts)
        self.anchor_embeds = encode_conditions(pipe, self.anchors)
        self.uncond = encode_conditions(pipe, [""])
        uses_retain = config.gamma > 0 or config.retain_kv_weight > 0 or config.mask_contrast > 0
        self.retain = retain_prompt_list(concept, config) if uses_retain else []
        self.retain_embeds = encode_conditions(pipe, self.retain) if self.retain else None
        if config.retain_mask and not (self.retain and config.gamma > 0):
            raise ValueError("retain_mask adds the entries salient for the retain loss, so it needs retain prompts "
                             "(a combination, a conditional concept or retain_preserve) and gamma > 0")
        width = self.embeds.embeds.shape[-1]
        kv_names = text_kv_names(self.params, width)
        # every token of every retain prompt, as the cross-attention K/V projections see it
        self.retain_kv = None
        if self.retain and config.retain_kv_weight > 0:
            if not kv_names:
                raise ValueError("retain_kv_weight needs cross-attention to_k/to_v weights in the scope; this scope has none")
            self.retain_kv = KVMatchLoss(trainer.originals, kv_names, self.retain_embeds.embeds.reshape(-1, width))
        self.kv_forget = None
        if config.forget_loss == "kv":
            if not kv_names:
                raise ValueError("forget_loss='kv' needs cross-attention to_k/to_v weights in the scope; this scope has none")
            # every position of every target prompt, paired with the same position of its anchor prompt
            self.kv_forget = KVMatchLoss(trainer.originals, kv_names, self.embeds.embeds.reshape(-1, width),
                                         self.anchor_embeds.embeds.reshape(-1, width))
        self.sampler = DDIMSampler(pipe.scheduler, config.n_steps)
        self.betas = config.betas()
        # the finite-difference CSR re-runs the prediction with swapped weights (`torch.func.functional_call`)
        self.predictor = _Predictor(self.unet) if config.csr_hessian == "finite-difference" else None
        self.pool = self.retain_pool = None
        self.step_samples = config.step_draws_sample()
        if config.latents == "pool":
            if config.needs_target_pool(scorer_name):
                self.pool = self._make_pool(self.embeds, config.pool_size, -1)
            if self.retain and (config.gamma > 0 or config.mask_contrast > 0):  # the K/V term needs no latents
                self.retain_pool = self._make_pool(self.retain_embeds, config.retain_pool_size, -2)
        dev = next(iter(self.params.values())).device
        self.masks: dict[str, torch.Tensor] | None = None
        self.rows: dict[str, torch.Tensor] | None = None  # neuron masks (mask_unit="neuron")
        self.saliency_ema: dict[str, torch.Tensor] | None = None
        self.jaccards: list[float] = []
        self.stop = StopRule(self, config, concept) if config.stop_ratio is not None else None
        self.union = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self.params.items()}
        self.mask_sizes: list[int] = []
        self.term_sums = torch.zeros(4, dtype=torch.float64)  # forget, retain, regulariser, K/V retain
        self.retain_counts = torch.zeros(len(self.retain), dtype=torch.int64)
        self._device = dev

    # ------------------------------------------------------------ latents
    def _make_pool(self, embeds, size: int, salt: int) -> LatentPool:
        """``size`` finished latents of the ORIGINAL model on ``embeds`` (prompts cycled in a seeded order)."""
        return LatentPool(self.unet, self.trainer, self.sampler, embeds, self.uncond, size, self.config.guidance,
                          self.config.seed, salt)

    def draw_batch(self, g: torch.Generator, retain: bool = False):
        """``batch_size`` draws (retain: ``retain_draws``) stacked: (x_t, per-sample t, condition rows, prompt indices)."""
        n = self.config.retain_draws if retain else self.config.batch_size
        draws = [self.draw(g, retain) for _ in range(n)]
        embeds = self.retain_embeds if retain else self.embeds
        idx = [d[2] for d in draws]
        z = torch.cat([d[0] for d in draws])
        t = torch.tensor([int(d[1]) for d in draws], device=z.device)
        return z, t, cat_conditions([embeds[i : i + 1] for i in idx]), idx

    def draw(self, g: torch.Generator, retain: bool = False) -> tuple[torch.Tensor, int, int]:
        """(x_t, t, prompt index) for the target prompts (or the retain prompts)."""
        pool = self.retain_pool if retain else self.pool
        embeds = self.retain_embeds if retain else self.embeds
        if pool is not None:
            return pool.draw(g)
        i, s = randint(len(embeds), g), randint(self.config.n_steps, g)
        with self.trainer.reference():
            z = self.sampler.denoise(self.unet, initial_latents(self.unet, g), 0, s, embeds[i : i + 1], self.uncond,
                                     self.config.guidance)
        return z, self.sampler.timestep(s), i

    # ------------------------------------------------------------ masks
    def due(self, step: int) -> bool:
        if self.masks is None:
            return True
        k = self.config.mask_every
        return bool(k) and step % k == 0

    def _unit_masks(self, grads: dict[str, torch.Tensor], previous: dict[str, torch.Tensor] | None = None,
                    xi_keep: float | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """(entry masks, row masks or None) from saliency ``grads`` at the configured unit."""
        cfg = self.config
        if cfg.mask_unit == "neuron":
            rows = neuron_masks(grads, cfg.xi, cfg.topk, previous, xi_keep)
            return rows_to_entries(rows, self.params), rows
        return saliency_masks(grads, cfg.xi, cfg.topk, cfg.mask_granularity), None

    def recompute_masks(self, step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        cfg = self.config
        total = summed(saliency(self.target_score(g), self.params) for _ in range(cfg.saliency_samples))
        if cfg.mask_contrast > 0 and self.retain:
            total = self.contrast_with_retain(total, g)
        if cfg.mask_unit == "neuron":
            total = neuron_scores(total)
        if cfg.saliency_momentum > 0:
            # Running mean of |g| over recomputations: the mask follows the saliency that persists.
            m = cfg.saliency_momentum
            total = {n: g.abs() if self.saliency_ema is None else m * self.saliency_ema[n] + (1 - m) * g.abs()
                     for n, g in total.items()}
            self.saliency_ema = total
        before = self.masks
        self.masks, self.rows = self._unit_masks(total, self.rows, cfg.xi_keep)
        if cfg.retain_mask and self.retain and cfg.gamma > 0:
            drift = self.retain_drift_saliency(g)
            drift, _ = self._unit_masks(neuron_scores(drift) if cfg.mask_unit == "neuron" else drift)
            self.masks = {n: m | drift[n] for n, m in self.masks.items()}
        if before is not None:
            self.jaccards.append(jaccard(before, self.masks))
        for n, m in self.masks.items():
            self.union[n] |= m
        self.mask_sizes.append(mask_size(self.masks.values()))
        if self.mask_callback is not None:
            self.mask_callback(step, {n: m.detach().clone() for n, m in self.masks.items()})
        return self.masks

    def contrast_with_retain(self, target: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
        """Target saliency minus ``mask_contrast`` x the retain prompts' (each scaled by its tensor's mean).

        The retain saliency is the gradient of ``mean(eps*(x_r, c_retain)^2)``: the entries the retain
        prompts' predictions depend on.  What stays positive is salient for the target and not for
        the parts, so the mask avoids the entries that a combination shares with its parts.
        """
        def retain_score() -> torch.Tensor:
            zr, tr, j = self.draw(g, retain=True)
            return predict(self.unet, zr, tr, self.retain_embeds[j : j + 1]).float().pow(2).mean()

        kept = summed(saliency(retain_score(), self.params) for _ in range(self.config.saliency_samples))
        return contrast_saliency(target, kept, self.config.mask_contrast)

    def retain_drift_saliency(self, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Gradient of the retain loss (the parts' drift from the original) at the current weights.

        Its salient entries are where the parts are being pulled off; adding them to the mask
        lets the retain term correct the parts there.  Zero at the original weights, so the
        first mask is the target's alone.
        """
        def drift() -> torch.Tensor:
            zr, tr, j = self.draw(g, retain=True)
            rcond = self.retain_embeds[j : j + 1]
            with self.trainer.reference():
                ref = predict(self.unet, zr, tr, rcond)
            return F.mse_loss(predict(self.unet, zr, tr, rcond).float(), ref.float())

        return summed(saliency(drift(), self.params) for _ in range(self.config.saliency_samples))

    def target_score(self, g: torch.Generator) -> torch.Tensor:
        """The scorer on one drawn target sample (edited output; the original's anchor prediction as
        reference, computed only for scorers that read it, i.e. not the image scorers).

        With ``forget_loss="kv"`` the ``forget`` scorer is that loss itself (no sample needed).
        """
        if not self.config.scorer_draws_sample(self.scorer_name):
            return self.kv_forget(self.params)
        z, t, i = self.draw(g)
        cond = self.embeds[i : i + 1]
        ref = None
        if self.scorer_name not in IMAGE_SCORERS:  # image scorers read the edited prediction only
            ref = self.forget_reference(z, t, cond, self.anchor_embeds[i : i + 1])
        out = predict(self.unet, z, t, cond)
        return self.scorer(ScoreSample(z=z, t=t, cond=cond, prompt=self.prompts[i], output=out, reference=ref))

    @torch.no_grad()
    def forget_reference(self, z: torch.Tensor, t, cond, anchors) -> torch.Tensor:
        """The frozen model's target of the noise-space forgetting loss on ``x_t``: its prediction for the
        anchor prompts (``forget_target="anchor"``) or ESD's ``eps(x_t,'') - g (eps(x_t,c) - eps(x_t,''))``."""
        with self.trainer.reference():
            if self.config.forget_target == "anchor":
                return predict(self.unet, z, t, anchors)
            eps_c = predict(self.unet, z, t, cond)
            eps_u = predict(self.unet, z, t, cat_conditions([self.uncond] * z.shape[0]))
        return esd_target(eps_c, eps_u, self.config.negative_guidance)

    # ------------------------------------------------------------ one iteration
    def __call__(self, step: int, g: torch.Generator) -> torch.Tensor:
        if self.stop is not None and self.stop.check(step):
            # stopped: an empty mask, so the optimiser step changes nothing
            self.masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self.params.items()}
            return torch.stack([(p * 0).sum() for p in self.params.values()]).sum()
        if self.due(step):
            self.recompute_masks(step, g)
        masks = self.masks or {}
        out = ref = None
        if self.step_samples:
            z, t, cond, idx = self.draw_batch(g)
            if self.kv_forget is None:  # before the edited pass: the reference swaps the weights in place
                ref = self.forget_reference(z, t, cond, cat_conditions([self.anchor_embeds[i : i + 1] for i in idx]))
            ctx = double_backward_attention() if self.config.double_backward else contextlib.nullcontext()
            with ctx:
                out = predict(self.unet, z, t, cond)
        if self.kv_forget is not None:
            l_forget = self.kv_forget(self.params)
        else:
            l_forget = F.mse_loss(out.float(), ref.float())
        loss = l_forget
        reg = torch.zeros((), device=l_forget.device)
        if "cip" in self.betas:
            reg = reg + self.betas["cip"] * cip_penalty(self.params, self.trainer.originals, masks,
                                                        self.config.cip_toward)
        if "csr" in self.betas:
            if self.config.csr_hessian == "exact":
                reg = reg + self.betas["csr"] * csr_penalty(out.float().pow(2).mean(), self.params, masks)
            else:
                def again(weights):  # f on the same sample, with the masked tensors replaced by ``weights``
                    moved = {f"unet.{n}": w for n, w in weights.items()}
                    return torch.func.functional_call(self.predictor, moved, (z, t, cond)).float().pow(2).mean()

                reg = reg + self.betas["csr"] * csr_penalty_fd(out.float().pow(2).mean(), self.params, masks, again)
        loss = loss + reg
        l_retain = torch.zeros((), device=l_forget.device)
        if self.retain and self.config.gamma > 0:
            zr, tr, rcond, js = self.draw_batch(g, retain=True)
            with self.trainer.reference():
                ref_r = predict(self.unet, zr, tr, rcond)
            l_retain = F.mse_loss(predict(self.unet, zr, tr, rcond).float(), ref_r.float())
            loss = loss + self.config.gamma * l_retain
            for j in js:
                self.retain_counts[j] += 1
        l_kv = torch.zeros((), device=l_forget.device)
        if self.retain_kv is not None:
            l_kv = self.retain_kv(self.params)
            loss = loss + self.config.retain_kv_weight * l_kv
        self.term_sums += torch.tensor([float(l_forget.detach()), float(l_retain.detach()), float(reg.detach()),
                                        float(l_kv.detach())], dtype=torch.float64)
        return loss

    # ------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {"term_sums": self.term_sums, "retain_counts": self.retain_counts}
        if self.mask_sizes:
            state["mask_sizes"] = torch.tensor(self.mask_sizes, dtype=torch.int64)
        if self.masks is not None:
            state.update({f"mask/{n}": m for n, m in self.masks.items()})
            state.update({f"union/{n}": m for n, m in self.union.items()})
        if self.rows is not None:
            state.update({f"rows/{n}": m for n, m in self.rows.items()})
        if self.jaccards:
            state["jaccards"] = torch.tensor(self.jaccards, dtype=torch.float64)
        if self.stop is not None:
            state.update(self.stop.state_dict())
        if self.saliency_ema is not None:
            state.update({f"saliency_ema/{n}": v for n, v in self.saliency_ema.items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if "term_sums" in state:
            sums = state["term_sums"].cpu().to(torch.float64)
            self.term_sums = torch.cat([sums, torch.zeros(len(self.term_sums) - len(sums), dtype=torch.float64)])
        if "retain_counts" in state:
            self.retain_counts = state["retain_counts"].cpu().to(torch.int64)
        self.mask_sizes = [int(x) for x in state["mask_sizes"].tolist()] if "mask_sizes" in state else []
        if any(k.startswith("mask/") for k in state):
            self.masks = {n: state[f"mask/{n}"].to(self._device, torch.bool) for n in self.params}
            self.union = {n: state[f"union/{n}"].to(self._device, torch.bool) for n in self.params}
        if any(k.startswith("rows/") for k in state):
            self.rows = {n: state[f"rows/{n}"].to(self._device, torch.bool) for n in self.params}
        self.jaccards = [float(x) for x in state["jaccards"].tolist()] if "jaccards" in state else []
        if self.stop is not None:
            self.stop.load_state_dict(state)
        if any(k.startswith("saliency_ema/") for k in state):
            self.saliency_ema = {n: state[f"saliency_ema/{n}"].to(self._device) for n in self.params}

    # ------------------------------------------------------------ metrics
    @torch.no_grad()
    def metrics(self, iterations: int) -> dict[str, Any]:
        numel = sum(p.numel() for p in self.params.values())
        changed = sum(int((p.detach() != self.trainer.originals[n]).sum()) for n, p in self.params.items())
        union = sum(int(m.sum()) for m in self.union.values())
        n = max(1, iterations)
        return {
            "scorer": self.scorer_name,
            "regularizer": self.config.regularizer,
            "betas": dict(self.betas),
            "latents": self.config.latents,
            "scope_parameters": numel,
            "changed_parameters": changed,
            "changed_fraction": changed / numel,
            "mask_recomputations": len(self.mask_sizes),
            "mask_sizes": list(self.mask_sizes),
            "mask_fraction_mean": (sum(self.mask_sizes) / len(self.mask_sizes) / numel) if self.mask_sizes else 0.0,
            "mask_union_fraction": union / numel,
            "mask_unit": self.config.mask_unit,
            "cpu_seconds": time.process_time() - self._cpu0,
            "mask_jaccard_mean": (sum(self.jaccards) / len(self.jaccards)) if self.jaccards else None,
            "mask_jaccard_min": min(self.jaccards) if self.jaccards else None,
            **change_summary(self.params, self.trainer.originals),
            **(self.stop.metrics(iterations) if self.stop is not None else {}),
            "loss_forget_mean": float(self.term_sums[0]) / n,
            "loss_retain_mean": float(self.term_sums[1]) / n,
            "loss_regularizer_mean": float(self.term_sums[2]) / n,
            "loss_retain_kv_mean": float(self.term_sums[3]) / n,
            "retain_prompts": len(self.retain),
        }
