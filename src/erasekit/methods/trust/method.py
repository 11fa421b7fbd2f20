"""TRuST's entry points (`erase`, `erase_salun`, `erase_kv`) and their registrations."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from ...concepts.spec import ConceptSpec
from ...models.delta import WeightDelta
from ...models.unet_io import require_supported_unet
from ...training import fine_tune
from ..base import MethodSpec, MethodWork, register
from ..saliency import make_scorer
from .config import SCOPE, TRuSTConfig
from .losses import double_backward_attention
from .masks import MaskedUpdates
from .salun import SalUnConfig, SalUnPlusPlusConfig, step_class
from .step import MaskCallback
from .trust_kv import TRuSTKVConfig


def erase(pipe, concept: ConceptSpec, config: TRuSTConfig, method: str = "trust",
          mask_callback: MaskCallback | None = None, scorer_options: dict[str, Any] | None = None) -> WeightDelta:
    """Run TRuST (or SalUn / SalUn++, by ``method``) on ``pipe``; returns the delta, ``pipe`` is left unchanged.

    ``mask_callback(step, masks)`` is called at every mask recomputation with
    copies of the masks (by parameter name, relative to the UNet);
    ``scorer_options`` go to the scorer factory (e.g. ``detector=...``).
    """
    require_supported_unet(pipe.unet, method)
    if method == "salun" and (not config.static or config.regularizer != "none"):
        raise ValueError("salun is the static-mask, forgetting-loss-only case (mask_every=0, regularizer='none'); "
                         "use method 'salun++' for a mask recomputed every step, 'trust' for a regulariser")
    if method == "salun++" and (config.mask_every != 1 or config.regularizer != "none"):
        raise ValueError("salun++ is SalUn with its mask recomputed every step (mask_every=1, regularizer='none'); "
                         "use method 'trust' for other schedules or a regulariser")
    scope = config.scope or SCOPE
    options = {"clip_model": config.clip_model, **(scorer_options or {})}
    scorer_name, scorer = make_scorer(config.scorer, pipe, concept, **options)
    if config.optimizer != "adam":
        raise ValueError(f"{method} restores Adam's moments entry by entry outside the mask, which 8-bit "
                         "(blockwise quantised) moments do not allow; use optimizer='adam'")
    return fine_tune(pipe, concept, config, method, scope, config.iterations,
                     lambda trainer: step_class(config)(pipe, trainer, concept, config, scorer, scorer_name,
                                                        mask_callback),
                     around_run=lambda trainer, step: _around_run(trainer, step, config), scope_name=scope)


def _around_run(trainer, step, config: TRuSTConfig) -> ExitStack:
    """The training loop's context: masked optimiser steps, and with CSR under gradient checkpointing the
    math attention kernel for every forward and backward (the backward recomputes each checkpointed forward,
    which must use the kernel the CSR forward used)."""
    stack = ExitStack()
    stack.enter_context(MaskedUpdates(trainer.params, lambda: step.masks))
    if config.double_backward and config.gradient_checkpointing:
        stack.enter_context(double_backward_attention())
    return stack


def erase_salun(pipe, concept: ConceptSpec, config: SalUnConfig, mask_callback: MaskCallback | None = None,
                scorer_options: dict[str, Any] | None = None) -> WeightDelta:
    return erase(pipe, concept, config, "salun", mask_callback, scorer_options)


def erase_salun_pp(pipe, concept: ConceptSpec, config: SalUnPlusPlusConfig, mask_callback: MaskCallback | None = None,
                   scorer_options: dict[str, Any] | None = None) -> WeightDelta:
    return erase(pipe, concept, config, "salun++", mask_callback, scorer_options)


def erase_kv(pipe, concept: ConceptSpec, config: TRuSTKVConfig, mask_callback: MaskCallback | None = None,
             scorer_options: dict[str, Any] | None = None) -> WeightDelta:
    return erase(pipe, concept, config, "trust-kv", mask_callback, scorer_options)


def _work(spec: MethodSpec, config: TRuSTConfig, kind: str) -> MethodWork:
    kv = config.forget_loss == "kv"  # the K/V forgetting loss itself needs no UNet pass
    csr = "csr" in config.betas()
    pool = config.pool_size * config.n_steps * 2 if config.needs_target_pool() else 0
    # the retain term: on the preserve prompts (every built-in SD concept has them) with retain_preserve;
    # combinations and conditional concepts add their own retain prompts, which a kind does not tell
    kept = config.gamma > 0 and config.retain_preserve and not kv
    retain = config.retain_pool_size * config.n_steps * 2 if kept and config.latents == "pool" else 0
    retain_reference = kept and getattr(config, "retain_target", "original") == "original"
    per_mask = config.saliency_samples if config.scorer_draws_sample() else 0
    dynamic = bool(config.mask_every)
    masks_per_iter = per_mask / config.mask_every if dynamic else 0.0
    static = 0.0 if dynamic else per_mask  # the one mask: a reference and a gradient pass per sample
    static_grad = static
    if isinstance(config, SalUnConfig) and config.saliency_loss == "diffusion":
        static, static_grad = 0.0, 2.0 * static  # SalUn's saliency: one guided (cond + uncond) gradient pass
    fd_passes = 2 if csr and not config.double_backward and config.step_draws_sample() else 0  # central difference
    draws = int(config.step_draws_sample()) + masks_per_iter
    nograd = ((0 if kv else 1) + masks_per_iter + int(retain_reference)
              + (0 if config.latents == "pool" else (config.n_steps - 1) * draws))
    grad = draws + int(kept) + fd_passes
    return MethodWork(spec.name, spec.scope_for(config, kind), config.iterations, nograd, grad, 1,
                      setup_nograd=pool + retain + static, setup_grad=static_grad, double_backward=config.double_backward,
                      notes=("static mask from %d samples" % per_mask) if not dynamic else "",
                      masked_updates="dynamic" if dynamic else "static")


register(MethodSpec("trust", TRuSTConfig, erase,
                    "TRuST (reconstruction): dynamic saliency-masked fine-tuning of cross-attention q/k/v + CSR/CIP",
                    family="fine-tune", default_scope=SCOPE, work=_work, quick={"iterations": 16}))
register(MethodSpec("trust-kv", TRuSTKVConfig, erase_kv,
                    "TRuST variant (reconstruction): its forgetting loss as UCE's source term on the "
                    "cross-attention K/V, dynamic masks, CSR",
                    family="fine-tune", default_scope=SCOPE, work=_work, quick={"iterations": 120}))
register(MethodSpec("salun", SalUnConfig, erase_salun,
                    "SalUn: static saliency-masked fine-tuning (SD: top half of the UNet by saliency, retain term)",
                    family="fine-tune", default_scope=SCOPE, work=_work, quick={"iterations": 30}))
register(MethodSpec("salun++", SalUnPlusPlusConfig, erase_salun_pp,
                    "SalUn++: SalUn with its saliency mask recomputed after every step (TRuST's Figure 1 baseline)",
                    family="fine-tune", default_scope=SCOPE, work=_work, quick={"iterations": 30}))
