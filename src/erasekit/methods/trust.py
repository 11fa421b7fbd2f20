"""TRuST — Targeted Robust Selective fine-Tuning (seed 002), and SalUn as its static special case.

RECONSTRUCTION.  No public code exists for TRuST; this module rebuilds it from
the paper's description (spec/methods.md, "TRuST").  Every number the paper
does not state is a choice made here and marked as such; treat results as
"TRuST (reconstruction)".

What it does
------------
Fine-tunes the cross-attention ``to_q``/``to_k``/``to_v`` weights
(scope ``cross_attn_qkv``), but only the few entries that carry the concept:

1. **Saliency mask.**  The gradient ``g`` of a concept score for a target
   prompt with respect to the scope (scorers in `erasekit.methods.saliency`:
   ``clip`` as in the paper, the Shapes ``detector``, or the ``forget`` loss;
   ``auto`` picks the best available) gives per tensor
   ``m = 1[|g| >= mean(|g|) + xi std(|g|)]`` (xi = 2) or a ``topk`` fraction.
   ``mask_every = k`` recomputes it every k iterations from the CURRENT
   weights (k = 1: the paper's "dynamic" TRuST); ``mask_every = 0``/``None``
   computes it once, before the first update (static: SalUn).
2. **Forgetting loss** (SalUn-style, "random label" towards the anchor)::

       L_f = || eps*(x_t, c_target, t) - eps(x_t, c_anchor, t) ||^2      (mean over elements)

   ``eps`` is the frozen original model (`Trainer.reference`), ``c_anchor``
   the concept's anchor prompt in the same template as the target prompt.
   (``forget_loss="kv"``, a reconstruction option, swaps it for UCE's source
   term on the cross-attention keys and values; see `Config`.)
3. **Regulariser** (``regularizer``):

   - ``cip`` (hard): ``beta * sum(m * |theta - theta_0|)``, an L1 pressure that
     keeps the change on few masked entries;
   - ``csr`` (soft, Hessian): ``beta * || m * grad_theta f ||^2`` with
     ``f = ||eps*(x_t, c_target)||^2`` (mean over elements).  Computed with
     ``create_graph=True`` so the trainer's ``backward`` differentiates through
     the gradient: its gradient is the Hessian-vector product
     ``2 H_f (m * m * grad f)`` (`csr_penalty`; tested against central
     differences).  The forward that feeds it runs with the math SDPA
     kernel, because fused attention kernels have no double backward;
   - ``cip+csr`` both, ``none`` neither (SalUn).
4. **Retain term** for combinations ("a red circle": erase the pair, keep "a
   red square" and "a blue circle") and conditional concepts ("a circle on a
   dark background": keep circles elsewhere and other shapes on dark)::

       L_r = gamma * || eps*(x_r, c_retain, t) - eps(x_r, c_retain, t) ||^2

   with ``c_retain`` drawn each iteration from ``concept.retain_prompts()``
   (plus ``concept.preserve`` with ``retain_preserve``).  Plain concepts
   have no retain prompts and the term vanishes.  Among the other methods,
   the closed-form ones (UCE, TRCE stage 1) can express the same thing through
   their preservation term (put the retain prompts in ``preserve``); TRCE
   stage 2 has a preservation loss (on unconditional trajectories) that could
   take them; ESD and KSCU have none in their papers, and take the same
   term as the opt-in ``preserve_weight`` (`erasekit.methods.retain`; off by
   default, so by default a combination is erased together with its parts).

Total loss: ``L = L_f + [beta R] + [gamma L_r]``.

Masked updates
--------------
The shared `Trainer` runs Adam.  `MaskedUpdates` hooks that optimiser (global
``torch.optim`` step hooks, active only during the run and only for the
optimiser that owns the scope parameters): before each step it multiplies the
gradients by the current mask and snapshots the parameters and Adam moments;
after the step it restores every entry outside the mask — parameter AND
moments ("lazy" Adam).  So Adam's momentum from an earlier mask cannot move an
entry that has left the mask, an entry's moments only evolve while it is
masked, and the final delta is exactly zero outside the union of all masks.

Where x_t comes from (the spec leaves it open)
----------------------------------------------
``latents="pool"`` (default, as SalUn): a forget set of ``pool_size`` latents
generated ONCE by the original model (DDIM ``n_steps``, CFG ``guidance``) on the
target prompts (cycled in a seeded order) and, for the retain term,
``retain_pool_size`` latents on the retain prompts; each iteration picks one,
a timestep ``t`` uniform in ``[0, num_train_timesteps)`` and fresh noise, and
forms ``x_t`` with the scheduler's forward process.  ``latents="partial"``:
ESD-style, the original model denoises fresh noise down to a uniformly random
DDIM step s (more varied, one generation per iteration).  The pool is
regenerated deterministically from the seed, so checkpoint resume works.

Defaults (SD-1.5; RECONSTRUCTION where marked)
----------------------------------------------
lr 1e-5 (as SalUn); 200 iterations (reconstruction: the paper only says TRuST
needs fewer steps than SalUn, whose preset here has 1000); xi 2.0 and k = 1
(spec); DDIM 50 steps, CFG 7.5 for the forget set (SD's default sampling,
which is how SalUn's forget images are made); pool 16 + 16 latents,
1 saliency sample per recomputation, gamma 1.0, regulariser ``csr`` with beta
1.0, ``cip`` beta 1e-5 (reconstructions: the per-entry CIP gradient is
``beta * sign``, so beta must sit near the forgetting loss's gradient scale or
it freezes the masked entries).  Metrics: fraction of scope entries changed,
iterations, mask recomputations, mask size at each recomputation, union of
masks, mean loss terms, the scorer used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import field_validator
from torch import nn

from ..concepts.spec import ConceptSpec
from ..models.conditioning import cat_conditions, encode_conditions
from ..models.ddim import DDIMSampler
from ..models.delta import WeightDelta
from ..models.scopes import get_scope
from ..models.unet_io import initial_latents, predict, require_supported_unet
from ..training import EditSession, FineTuneConfig, Trainer, randint, run_key
from .base import MethodSpec, MethodWork, register
from .retain import KVMatchLoss, LatentPool, kept_prompts, text_kv_names
from .saliency import DEFAULT_CLIP, Scorer, ScoreSample, make_scorer, mask_size, saliency, saliency_masks

SCOPE = "cross_attn_qkv"
BETA_DEFAULTS = {"cip": 1e-5, "csr": 1.0}
MaskCallback = Callable[[int, dict[str, torch.Tensor]], None]
SHAPES_PRESET = {"iterations": 80, "lr": 1e-3, "n_steps": 25, "guidance": 3.0, "pool_size": 8, "retain_pool_size": 8}


class Config(FineTuneConfig):
    """TRuST (reconstruction) on SD-1.5: see the module docstring for what each default is based on.

    ``mask_every``: 1 = dynamic (TRuST), k = every k iterations, 0/None = once
    (static, SalUn).  ``topk`` (a fraction) replaces the ``xi`` threshold.
    ``beta`` None takes `BETA_DEFAULTS` per regulariser (with ``cip+csr`` a
    given beta applies to both).  ``scope`` None = ``cross_attn_qkv``.

    The ``shapes`` preset is for the shipped Shapes model (a ~10M-parameter
    UNet with 16x16 latents, erased on a CPU): 25 DDIM steps and CFG 3 (how
    that model is sampled), a larger learning rate (below; the ESD/KSCU presets
    raise theirs for the same reason: a small network moves too little at 1e-5), 80
    iterations (each TRuST iteration also recomputes the mask and, with CSR,
    runs a double backward, so it costs about three plain ones), pools of 8
    latents; ``scorer="auto"`` resolves to the Shapes detector there, the
    world's differentiable stand-in for the paper's CLIP score.  lr 1e-3, not
    the ESD presets' 1e-4: the xi = 2 mask holds ~5% of the scope, and with the neutral anchor
    "shape" at lr 1e-4 it did not erase at all (circle 0.88 -> 0.88).  Until stop 13
    this preset also replaced the xi threshold by a top-20% mask; with the pack's
    counterpart anchors (circle -> square) the spec's xi mask erases as well and
    touches far fewer entries, so the preset keeps xi.  Measured (32 prompts per
    tier, 96 preservation prompts): circle 0.88 -> 0.00/0.00/0.00 at other shapes'
    adherence 0.98 with 43% of the scope changed (top-20%: 0.03/0.03/0.00 at 0.98,
    84% changed); red 1.00 -> 0.91 (top-20%: 0.75): TRuST does not erase a colour here.

    ``saliency_momentum`` (a reconstruction option, 0 = the spec's mask from the
    current gradient alone) ranks entries by a running mean of ``|g|`` across
    recomputations, so the mask keeps the entries that stay salient instead of
    wandering; the union of masks, and so the changed fraction, shrinks.  Circle:
    momentum 0.9 -> 0.06/0.06/0.06 at 0.99 with 15% changed; 0.98 -> 0.06/0.12/0.03
    at 0.97 with 10% changed (SalUn's static xi mask: 4.8%).

    Two more reconstruction options for combinations, both 0 (off) by default;
    neither met issue 6's combination bar, so the preset leaves them off.
    Measured on "red circle" (32 prompts per tier, 48 preservation prompts; preset
    0.03/0.00/0.09 with the parts kept at 0.44):

    - ``mask_contrast`` c builds the mask from ``|g_t|/mean - c |g_r|/mean`` per
      tensor (`contrast_saliency`), ``g_r`` the gradient of the retain prompts'
      ``mean(eps*^2)``: entries salient for the combination but not for its
      parts.  c = 1 -> 0.00/0.00/0.00 at 0.54, c = 3 -> 0.00 at 0.56 (the loss is
      shape: circles of other colours drawn as squares).  With an anchor that
      changes only the colour, "blue circle" instead of the pack's "green
      square": c = 0 -> 0.25/0.19/0.34 at 0.85, c = 1 -> 0.22/0.09/0.38 at 0.92,
      c = 2 -> 0.22/0.09/0.34 at 0.88, c = 1 with 120 iterations -> 0.19/0.19/0.34
      at 0.88; "green circle": c = 1 -> 0.78/0.66/0.75 at 0.90.
    - ``retain_kv_weight`` w adds ``w * kv_drift``: the relative change of the
      cross-attention keys and values of every retain-prompt token, i.e. UCE's
      preservation moment as a loss.  w = 0.1 -> 0.81/0.69/0.78 at 0.83, w = 1 ->
      0.97/0.97/1.00 at 0.96, w = 10 and 100 -> no erasure at 1.00: in these runs
      the masked fine-tune did not move the combination's keys and values without
      moving its parts' (UCE's closed form, on the same K/V, does: 0.00 at 0.90).
    - ``retain_mask`` adds to each mask the entries salient for the retain loss, i.e. where the
      parts are currently being pulled off (`TrustStep.retain_drift_saliency`; zero at the original
      weights, so the first mask is the target's alone), so the retain term can correct them there.
      Why: UCE's working combination edit restricted to TRuST's mask (43% of the K/V entries, 49%
      of the edit's squared norm) still erases (0.00/0.00/0.00) but keeps the parts at 0.54, TRuST's
      own failure; restricted instead to its own largest 43% (95% of the norm) it gives 0.03/0.00/0.03
      at 0.92 and its largest 20% 0.12/0.06/0.06 at 0.90, while a random 43% gives 0.69/0.31/0.47 at
      0.96.  So a sparse edit can erase the pair and keep the parts, but not on the target-salient
      entries alone: the compensating changes that keep the parts lie outside them.  Measured (pack
      anchor): gamma 10 without it -> 0.78/0.59/0.69 at 0.90; with it gamma 1 -> 0.00 at 0.50, 10 ->
      0.16/0.19/0.19 at 0.81 (160 iterations: 0.00 at 0.69), 20 -> 0.34/0.28/0.31 at 0.83, 30 ->
      0.53/0.44/0.41 at 0.94.  It moves the trade-off but meets neither bar at once.
    - A paired retain term (tried in stop 17, not kept): the parts held at the forget sample's own
      ``x_t`` (4 retain prompts per step, batched with the target) instead of at their own pooled
      latents, so the constraint sits exactly where the forgetting loss acts.  gamma 10 ->
      0.62/0.59/0.75 at 0.90 (the unpaired term: 0.78/0.59/0.69 at 0.90); gamma 1 -> 0.00/0.00/0.03
      at 0.48.  The same trade-off as the unpaired term.

    ``forget_loss="kv"`` (a reconstruction option; default ``"noise"``, the spec's loss) replaces the
    forgetting loss by UCE's source term written as a loss (`erasekit.methods.retain.kv_forget`): every
    position of every target prompt is pulled to the key and value that the same position of its
    anchor prompt had in the original model; the ``forget`` scorer's saliency is then that loss's
    gradient.  Masks, dynamic recomputation, masked updates and the regulariser are TRuST's.  With
    the parts' keys and values held (``retain_kv_weight``), it **meets issue 6's combination bar**:
    ``{"forget_loss": "kv", "scorer": "forget", "scope": "cross_attn_kv", "regularizer": "none",
    "gamma": 0, "retain_kv_weight": 20, "topk": 0.4, "iterations": 600}`` takes red circle 0.97/1.00/1.00
    -> 0.12/0.06/0.09 with the parts at 0.92 (colour 0.96, shape 0.96), 43% of the K/V changed, 21 s
    (241 s before the K/V terms were computed from second moments, `KVMatchLoss`; one seed; SalUn on
    the same concept: 0.00 at 0.48, 4.9% of its scope, 19 s, 150 iterations; esd-x 0.00 at 0.67, 67 s).  The curve around it (K/V scope, 300 iterations unless said): retain 10 ->
    0.03/0.03/0.03 at 0.81, 15 -> 0.16/0.12/0.06 at 0.88, 20 -> 0.25/0.16/0.19 at 0.92 (600 iterations:
    the point above), 30 -> 0.41/0.28/0.31 at 0.94; top-20% with 10 -> 0.12/0.12/0.16 at 0.83; the xi
    mask (5.6% changed) with 10 -> 0.84/0.56/0.62 at 0.92; no mask (topk 1) with 10 -> 0.06/0.00/0.03 at
    0.90 (UCE's own point), with 30 -> 0.28/0.19/0.19 at 0.94.  With the spec's regulariser on
    (CSR, beta 1; drop ``"regularizer": "none"``) the bar is still met: 0.19/0.06/0.09 at 0.92, 45%
    changed, 106 s (was 325 s; seed 1: 0.19/0.09/0.09 at 0.92, 45% changed).
    Not the preset: the spec's TRuST uses the noise-space forgetting loss, and explicit 0.19 of 0.97
    is just past the 5x bar, with 48 preservation prompts.

    Measured at stop 16 and not kept as options (same setting):

    - TRuST on the K/V only (``scope="cross_attn_kv"``, no query): 0.03/0.06/0.12 at 0.56 (colour
      0.92, shape 0.58: the same shape loss as the preset); adding ``retain_kv_weight`` 1 stops the
      erasure (0.97 at 0.98).
    - A K/V forgetting term next to the forgetting loss, ``a * sum_W ||W E_t^T - W0 E_a^T||^2 /
      ||W0 E_a^T||^2`` over the target and anchor prompts' padded token embeddings (UCE's source
      term written as a loss), with ``retain_kv_weight`` b: a = b = 1 or 10 -> 0.03/0.03/0.06 at 0.54;
      a = 1, b = 3 -> 0.28/0.25/0.31 at 0.73; a = 3, b = 10 -> 0.34/0.31/0.44 at 0.73; a = 1, b = 10 ->
      0.88/0.75/0.75 at 0.90.  The masked gradient descent moves along the same cliff between
      erasing the parts with the pair and keeping both; UCE's exact least squares on all K/V
      entries is the only method here that lands between.
    - Stop 18: the spec's noise-space loss on the K/V scope with the parts' keys and values held by
      a small ``retain_kv_weight`` (the way esd-x's Shapes preset keeps colours, at 0.03), preset
      otherwise (80 iterations, xi mask, CSR beta 1; bench protocol, 48 preservation prompts):
      w = 0.01 -> 0.12/0.19/0.25 at 0.75; 0.03 -> 0.53/0.47/0.56 at 0.88 (240 iterations:
      0.09/0.16/0.12 at 0.58); 0.1 -> 0.91/0.78/0.84 at 0.94 (400 iterations: 0.38/0.38/0.44 at
      0.71).  The same cliff: more iterations erase further and lose the parts faster.
    - Stop 19: the same loss with the denser mask that lets trust-kv land (``topk`` 0.4, K/V scope,
      CSR beta 1, bench protocol): ``retain_kv_weight`` 1 -> no erasure (0.94 after 80 iterations,
      0.97/0.84/0.97 after 240); 0.3 with 240 -> 0.66/0.41/0.62 at 0.88; 0.1 -> 0.44/0.41/0.47 at
      0.83 (80 iterations), 0.06/0.00/0.03 at 0.67 (240).  On the spec's scope (query too), top-40%
      with 1 -> 0.88/0.75/0.91 at 0.79, the colours lost through the query weights, which the K/V
      term does not hold.  So the mask's density is not what separates trust-kv from the spec's
      loss: the noise-space forgetting loss moves the parts with the pair under every mask tried.
    - Stop 20: the anchor.  The pack's "green square" changes both attributes of "red circle", so the
      forgetting loss pulls both parts; an anchor that changes one attribute damages only that one
      (the spec's TRuST otherwise: xi mask, CSR beta 1, query/key/value; bench protocol, set with
      ``erase --anchor``).  Preset (80 iterations, gamma 1): "red square" -> 0.03/0.03/0.09 at 0.56
      (colour 0.98, shape 0.56: blue circles drawn as squares); "blue circle" -> 0.25/0.19/0.34 at
      0.85 (colour 0.88).  With "blue circle" and gamma 10 the trade-off is a slope, not a cliff:
      160 iterations -> 0.34/0.34/0.38 at 0.96, 240 -> 0.41/0.44/0.50 at 0.98, 320 -> 0.22/0.19/0.31
      at 0.96, **480 -> 0.09/0.12/0.16 at 0.92** (colour 0.94, shape 0.98; 147 s), 640 ->
      0.06/0.00/0.12 at 0.88; gamma 3 -> 0.28 at 0.85 (80) and 0.06 at 0.81 (160), gamma 6 with 200
      -> 0.34 at 0.88.  The 480-iteration point is the spec's TRuST meeting the combination bar, but
      on seed 0 only: seed 1 does not erase (0.94/0.84/0.84 at 0.98), seed 2 erases and loses the
      parts (0.12/0.09/0.16 at 0.79).  The same setting with the pack's anchor -> 0.00 at 0.58, with
      "green circle" (red's counterpart colour) -> 0.16/0.12/0.16 at 0.69 (colour 0.71).  So no
      anchor makes the noise-space loss meet the bar robustly; the preset and the pack keep theirs.
    - Stop 21: where the seed dependence comes from.  ``batch_size`` B (an option, default 1: the
      spec gives no batch size) draws B forget and B retain samples per iteration.  With "blue
      circle", gamma 10 and B = 4 (bench protocol): 120 iterations -> 0.34/0.28/0.34 at 1.00 (seed
      1: 0.94 at 0.96); 240 -> seeds 0/1/2 0.06/0.06/0.12 at 0.90, 0.78/0.78/0.78 at 0.96,
      0.06/0.03/0.09 at 0.81 (seed 1 with 4 saliency samples per mask: 0.81 at 0.96), the same
      pattern per seed as with B = 1, so batching is not what varies.  The 8-latent pools are: with
      ``pool_size`` = ``retain_pool_size`` = 32 the three seeds agree, 0.19/0.22/0.19 at 0.98,
      0.16/0.19/0.19 at 0.88, 0.19/0.12/0.16 at 0.90 (about 190 s each) -- explicit+synonym falls
      4.8x, 5.6x, 6.4x.  Gamma 15 with 300 iterations (seed 1) -> 0.16/0.12/0.19 at 0.81.  So with
      a colour-only anchor and larger pools the spec's TRuST sits on both bars at once on every
      seed, over neither.  The preset with 32-latent pools (bench protocol, pack anchors): circle
      0.09/0.12/0.12 and 0.06/0.12/0.06 at 1.00 on seeds 0 and 1 (8-latent pools: 0.00 and
      0.19/0.16/0.16), so the seeds agree there too; red circle 0.00/0.00/0.03 at 0.56 (8: 0.44);
      circle on dark 0.00 at 0.91 (8: 0.93).  No bar changes side, so the preset keeps its pools,
      batch and the pack's anchor.
    - Stop 22: is it where the run stops?  At a constant lr the weights jitter from step to step
      (see the trainer's ``lr_schedule``), so the same setting with cosine decay over 480
      iterations ("blue circle", gamma 10, B = 4, 32-latent pools), evaluated every 80 iterations:
      seed 0 0.38/0.28/0.41 at 0.96 (240), 0.19/0.22/0.25 at 0.98 (320), 0.12/0.19/0.19 at 0.96 (400
      and 480); seed 1 0.25/0.25/0.31 at 0.85, 0.16/0.19/0.22 at 0.88, then 0.16/0.19/0.19 at 0.88
      (400 and 480).  The runs settle, and they settle apart.  The 480-iteration deltas measured
      again with 64 prompts per tier and 192 preservation prompts: seed 0 0.14/0.20/0.17 at 0.95
      (explicit+synonym falls 5.8x), seed 1 0.22/0.27/0.22 at 0.89 (4.0x).  So seed 1's miss is
      not measurement noise: the spec's loss meets the combination bar on seed 0 and misses it on
      seed 1 on both counts.  Seed 2: 0.16/0.19/0.22 at 0.90 (32/48), 0.20/0.23/0.23 at 0.91 with
      64/192 (4.6x): one seed in three over the 5x bar.
    - Stop 23: what moves seed 1.  Same setting (cosine 480, "blue circle", B = 4, 32-latent pools),
      seed 1, bench protocol: ``mask_contrast`` 1 -> 0.12/0.19/0.19 at 0.88 (no change);
      ``retain_mask`` with gamma 10 -> 0.06/0.12/0.09 at 0.83, gamma 15 -> 0.09/0.12/0.16 at 0.88,
      **gamma 20 -> 0.09/0.12/0.16 at 0.90**.  The retain mask lets the parts be corrected where they
      drift, and the stronger retain term then uses it.  Gamma 20 with the retain mask on four seeds,
      measured with 64 prompts per tier and 192 preservation prompts: seed 0 0.09/0.09/0.06 at 0.96
      (explicit+synonym falls 10.6x), seed 1 0.16/0.17/0.20 at 0.90 (6.0x), seed 2 0.12/0.11/0.14 at
      0.92 (8.5x), seed 3 0.14/0.16/0.20 at 0.92 (6.7x); at 32/48 the same runs give 0.09/0.06/0.06 at
      0.98, 0.09/0.12/0.16 at 0.90, 0.09/0.09/0.12 at 0.90, 0.09/0.12/0.19 at 0.92.  **So the spec's
      noise-space TRuST, with the retain mask (a reconstruction option) and an anchor that changes
      one part, meets the combination bar on every seed tried**; seed 1 sits at the preservation bar
      (0.903), not over it by a margin.  That setting is the ``shapes-combination`` preset (below).
      Its cost: 281 s for 480 iterations on the 2-core CPU (``erase``, seed 0), and 93% of the
      Q/K/V entries changed: each dynamic mask holds ~9% of the scope, but 480 of them (with the
      retain mask's entries) cover nearly all of it.  ``saliency_momentum`` 0.9 does not shrink that
      union (91%; seed 0 0.09/0.00/0.03 at 0.98, seed 1 0.16/0.19/0.16 at 0.94).  SalUn on the same
      concept changes 4.9% (0.00 at 0.48, 19 s) and esd-x all of cross-attention (0.00 at 0.67,
      67 s), both with the pack's anchor.  The same preset on "circle on a dark background" (pack
      anchor): 0.00/0.00/0.00 at 0.93 and 0.95 on seeds 0 and 1 (the ``shapes`` preset: 0.00 at 0.93).

    The ``shapes-combination`` preset (``erase --preset shapes-combination``) is the ``shapes`` preset
    with the settings that concepts carrying retain prompts (combinations, conditional concepts)
    need on the Shapes model: 32-latent pools (8 let the seeds disagree), 4 forget and 4 retain samples
    per iteration, gamma 20 with ``retain_mask`` (the parts corrected on the entries where they drift),
    480 iterations with cosine decay (at a constant lr the weights jitter between checkpoints).  Give
    it an anchor that changes one part of the combination (``--anchor "blue circle"`` for red
    circle): the pack's "green square" changes both, and the forgetting loss then pulls both parts
    with the pair.  It costs about 5x the ``shapes`` preset's seconds (480 iterations of 4+4 samples
    against 80 of 1+1) and changes most of the scope; plain concepts (no retain prompts) do not need it.
    """

    iterations: int = 200
    lr: float = 1e-5
    n_steps: int = 50
    guidance: float = 7.5
    latents: Literal["pool", "partial"] = "pool"
    pool_size: int = 16
    retain_pool_size: int = 16
    scorer: str = "auto"
    clip_model: str | None = DEFAULT_CLIP
    saliency_samples: int = 1
    xi: float = 2.0
    topk: float | None = None
    mask_granularity: Literal["tensor", "global"] = "tensor"
    mask_every: int | None = 1
    saliency_momentum: float = 0.0
    mask_contrast: float = 0.0
    retain_kv_weight: float = 0.0
    retain_mask: bool = False
    forget_loss: Literal["noise", "kv"] = "noise"
    batch_size: int = 1
    regularizer: Literal["csr", "cip", "cip+csr", "none"] = "csr"
    beta: float | None = None
    gamma: float = 1.0
    retain_preserve: bool = False
    n_synonyms: int | None = None
    n_templates: int | None = None

    EXTENSIONS: ClassVar[tuple[str, ...]] = ("saliency_momentum", "mask_contrast", "retain_kv_weight", "retain_mask",
                                             "forget_loss", "batch_size")
    PRESETS: ClassVar[dict] = {"shapes": SHAPES_PRESET,
                               "shapes-combination": {**SHAPES_PRESET, "iterations": 480, "pool_size": 32,
                                                      "retain_pool_size": 32, "batch_size": 4, "gamma": 20.0,
                                                      "retain_mask": True, "lr_schedule": "cosine"}}

    @field_validator("mask_every")
    @classmethod
    def _mask_every(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError("mask_every must be >= 1 (recompute every k iterations) or 0/None (static)")
        return v

    @field_validator("pool_size", "retain_pool_size", "saliency_samples", "n_steps", "batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("mask_contrast", "retain_kv_weight")
    @classmethod
    def _contrast(cls, v: float) -> float:
        if v < 0:
            raise ValueError("mask_contrast and retain_kv_weight are >= 0 (0 = off, the spec's TRuST)")
        return v

    @field_validator("saliency_momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("saliency_momentum is in [0, 1)")
        return v

    @field_validator("topk")
    @classmethod
    def _topk(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 1:
            raise ValueError("topk is a fraction in (0, 1]")
        return v

    @property
    def static(self) -> bool:
        return not self.mask_every

    def betas(self) -> dict[str, float]:
        """The active regularisers and their weights."""
        if self.regularizer == "none":
            return {}
        names = self.regularizer.split("+")
        return {n: (self.beta if self.beta is not None else BETA_DEFAULTS[n]) for n in names}

    def step_draws_sample(self) -> bool:
        """Whether an iteration draws a target ``x_t``: the noise forgetting loss predicts on it and CSR
        differentiates that prediction; the K/V forgetting loss alone needs no sample."""
        return self.forget_loss == "noise" or "csr" in self.betas()

    def scorer_draws_sample(self, scorer_name: str | None = None) -> bool:
        """Whether a mask recomputation draws target samples: every scorer but ``forget`` with the K/V
        forgetting loss (which is then that loss itself).  ``scorer_name`` is the resolved scorer
        (``auto`` resolves at run time); None takes ``self.scorer``."""
        return not (self.forget_loss == "kv" and (scorer_name or self.scorer) == "forget")

    def needs_target_pool(self, scorer_name: str | None = None) -> bool:
        """Whether a pool of target latents is generated up front (only with ``latents="pool"``)."""
        return self.latents == "pool" and (self.step_draws_sample() or self.scorer_draws_sample(scorer_name))


class SalUnConfig(Config):
    """SalUn (Fan et al., ICLR 2024) as TRuST's static case: one mask, forgetting loss (+ retain term) only.

    Same loss and scope as TRuST, mask computed once from the forgetting loss's
    gradient averaged over 16 samples (SalUn averages over its forget set);
    lr 1e-5 as SalUn; 1000 iterations (reconstruction, batch 1).  SalUn's
    released code ranks |g| globally and keeps a 50% fraction: set
    ``topk=0.5, mask_granularity="global"`` for that; the default keeps the
    spec's per-tensor ``xi`` threshold so SalUn and TRuST differ only in the
    mask schedule and the regulariser.  ``shapes`` preset: as TRuST's (lr 1e-3,
    xi mask), with 150 iterations (the ESD preset's budget).  Measured: circle
    0.88 -> 0.03/0.03/0.00 at 1.00 with 4.8% of the scope changed; red 1.00 ->
    0.66/0.69/0.56 at 0.86.
    """

    iterations: int = 1000
    scorer: str = "forget"
    saliency_samples: int = 16
    mask_every: int | None = 0
    regularizer: Literal["csr", "cip", "cip+csr", "none"] = "none"

    PRESETS: ClassVar[dict] = {
        "shapes": {"iterations": 150, "lr": 1e-3, "n_steps": 25, "guidance": 3.0, "pool_size": 8,
                   "retain_pool_size": 8, "saliency_samples": 8},
    }


class KVConfig(Config):
    """``trust-kv``: TRuST (reconstruction) with its forgetting loss moved into the cross-attention K/V.

    NOT the paper's TRuST: one labelled change.  The forgetting loss is UCE's source term
    written as a loss (``forget_loss="kv"``, `erasekit.methods.retain.KVMatchLoss`): every
    position of every target prompt is pulled to the key and value its anchor prompt had in
    the original model, and the kept prompts' keys and values are held (``retain_kv_weight``
    20 on ``retain_prompts()`` plus ``preserve``).  Saliency is that loss's gradient, the mask
    is a dynamic top-40% per tensor, updates are masked, and the spec's CSR regulariser stays
    on (its prediction term needs a UNet pass per step; the K/V losses need none); the scope is
    the K/V (a query weight never sees the text, so the K/V loss cannot move it).  Why it exists: with the spec's noise-space loss, TRuST on this model erases "red
    circle" only together with its parts (0.44) and does not erase red at all (0.91); this
    variant meets the 5x / 0.9 bars on a shape, a colour, a combination and a conditional
    concept with one setting (numbers in `Config`'s docstring and the stop-17 note).

    SD defaults are TRuST's (lr 1e-5, 200 iterations, CSR beta 1) with the changes above;
    they are untested on Stable Diffusion.  ``shapes`` preset: TRuST's, with 600 iterations
    (300 left red circle at 0.25/0.16/0.19 with the parts at 0.92) and CSR beta 0.1: at beta 1
    CSR holds red back (1.00 -> 0.19/0.28/0.31 at 1.00), at 0.1 it goes (0.00/0.00/0.06 at
    0.94); without CSR 0.00/0.03/0.03 at 0.94.  Measured with the setting at beta 1 / without
    CSR (32 prompts per tier; 96 preservation prompts for circle and red, 48 for the
    scenarios): circle 0.88 -> 0.06/0.06/0.06 at 0.98 / 0.09/0.06/0.06 at 0.97; "circle on a
    dark background" 0.97 -> 0.09/0.06/0.16 at 0.98 / the same; red circle 0.97 ->
    0.19/0.06/0.09 at 0.92 / 0.12/0.06/0.09 at 0.92.  The bench has the preset's own cells (seed 0:
    red circle 0.16/0.06/0.03 at 0.92, the conditional 0.09/0.06/0.16 at 0.98).  Seed 1, same
    prompts: red circle 0.12/0.06/0.03 at 0.92, the conditional 0.09/0.06/0.16 at 0.98 again.
    The seed barely matters: the K/V losses and the masks drawn from them are deterministic, and
    only CSR's term (beta 0.1) draws samples.
    """

    scope: str | None = "cross_attn_kv"
    scorer: str = "forget"
    forget_loss: Literal["noise", "kv"] = "kv"
    topk: float | None = 0.4
    retain_kv_weight: float = 20.0
    retain_preserve: bool = True
    gamma: float = 0.0

    PRESETS: ClassVar[dict] = {"shapes": {**Config.PRESETS["shapes"], "iterations": 600, "beta": 0.1}}


# ------------------------------------------------------------------ regularisers
def cip_penalty(params: Mapping[str, torch.Tensor], originals: Mapping[str, torch.Tensor],
                masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """sum over masked entries of |theta - theta_0| (CIP)."""
    terms = [(masks[n].to(p.dtype) * (p - originals[n]).abs()).sum()
             for n, p in params.items() if n in masks and bool(masks[n].any())]
    return torch.stack(terms).sum() if terms else next(iter(params.values())).new_zeros(())


def csr_penalty(f: torch.Tensor, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """|| m * grad_theta f ||^2 (CSR), differentiable (create_graph): its gradient is 2 H_f (m * m * grad f)."""
    names = [n for n in params if n in masks and bool(masks[n].any())]
    if not names:
        return f.new_zeros(())
    grads = torch.autograd.grad(f, [params[n] for n in names], create_graph=True, allow_unused=True)
    terms = [((masks[n].to(g.dtype) * g) ** 2).sum() for n, g in zip(names, grads) if g is not None]
    return torch.stack(terms).sum() if terms else f.new_zeros(())


def double_backward_attention():
    """Context for a forward whose graph will be differentiated twice: the math SDPA kernel."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


# ------------------------------------------------------------------ masked optimiser steps
class MaskedUpdates:
    """While active, the optimiser that owns ``params`` only changes masked entries (see module docstring).

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
        for n, p in self.params.items():
            m = self._mask(n)
            if p.grad is not None:
                if m is None:
                    p.grad.zero_()
                else:
                    p.grad.mul_(m.to(p.grad.dtype))
            state = optimizer.state.get(p, {})
            moments = {k: v.detach().clone() for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape}
            self._saved[n] = (p.detach().clone(), moments)

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        if not self._ours(optimizer) or not self._saved:
            return
        for n, p in self.params.items():
            old, moments = self._saved[n]
            m = self._mask(n)
            keep = torch.zeros_like(p, dtype=torch.bool) if m is None else m
            p.copy_(torch.where(keep, p, old))
            state = optimizer.state.get(p, {})
            for k, v in moments.items():
                state[k].copy_(torch.where(keep, state[k], v))
        self._saved = {}


# ------------------------------------------------------------------ the step function
def contrast_saliency(target: Mapping[str, torch.Tensor], kept: Mapping[str, torch.Tensor],
                      contrast: float) -> dict[str, torch.Tensor]:
    """``max(0, |g_t| / mean|g_t| - contrast * |g_r| / mean|g_r|)`` per tensor: salient for the target, not the parts."""
    def scaled(a: torch.Tensor) -> torch.Tensor:
        a = a.abs().float()
        return a / a.mean().clamp_min(torch.finfo(a.dtype).tiny)

    return {n: (scaled(target[n]) - contrast * scaled(kept[n])).clamp_min(0) for n in target}


def summed(grads: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Entry-wise sum of one or more gradient dicts (saliency over several samples)."""
    total: dict[str, torch.Tensor] | None = None
    for g in grads:
        total = dict(g) if total is None else {n: total[n] + g[n] for n in g}
    if total is None:
        raise ValueError("no gradients to sum")
    return total


def retain_prompt_list(concept: ConceptSpec, config: Config) -> list[str]:
    """Prompts whose predictions the retain term keeps: ``retain_prompts()`` (+ ``preserve``), deduplicated."""
    return kept_prompts(concept, config.retain_preserve, config.n_templates)


class TrustStep:
    """One TRuST/SalUn iteration (mask refresh when due, L_f + regulariser + retain); checkpointable state."""

    def __init__(self, pipe, trainer: Trainer, concept: ConceptSpec, config: Config, scorer: Scorer,
                 scorer_name: str = "forget", mask_callback: MaskCallback | None = None):
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
        self.pool = self.retain_pool = None
        self.step_samples = config.step_draws_sample()
        if config.latents == "pool":
            if config.needs_target_pool(scorer_name):
                self.pool = self._make_pool(self.embeds, config.pool_size, -1)
            if self.retain and (config.gamma > 0 or config.mask_contrast > 0):  # the K/V term needs no latents
                self.retain_pool = self._make_pool(self.retain_embeds, config.retain_pool_size, -2)
        dev = next(iter(self.params.values())).device
        self.masks: dict[str, torch.Tensor] | None = None
        self.saliency_ema: dict[str, torch.Tensor] | None = None
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
        """``batch_size`` draws stacked: (x_t, per-sample t, condition rows, prompt indices)."""
        draws = [self.draw(g, retain) for _ in range(self.config.batch_size)]
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

    def recompute_masks(self, step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        cfg = self.config
        total = summed(saliency(self.target_score(g), self.params) for _ in range(cfg.saliency_samples))
        if cfg.mask_contrast > 0 and self.retain:
            total = self.contrast_with_retain(total, g)
        if cfg.saliency_momentum > 0:
            # Running mean of |g| over recomputations: the mask follows the saliency that persists.
            m = cfg.saliency_momentum
            total = {n: g.abs() if self.saliency_ema is None else m * self.saliency_ema[n] + (1 - m) * g.abs()
                     for n, g in total.items()}
            self.saliency_ema = total
        self.masks = saliency_masks(total, cfg.xi, cfg.topk, cfg.mask_granularity)
        if cfg.retain_mask and self.retain and cfg.gamma > 0:
            drift = saliency_masks(self.retain_drift_saliency(g), cfg.xi, cfg.topk, cfg.mask_granularity)
            self.masks = {n: m | drift[n] for n, m in self.masks.items()}
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
        """The scorer on one drawn target sample (edited output, original's anchor prediction as reference).

        With ``forget_loss="kv"`` the ``forget`` scorer is that loss itself (no sample needed).
        """
        if not self.config.scorer_draws_sample(self.scorer_name):
            return self.kv_forget(self.params)
        z, t, i = self.draw(g)
        cond = self.embeds[i : i + 1]
        with self.trainer.reference():
            ref = predict(self.unet, z, t, self.anchor_embeds[i : i + 1])
        out = predict(self.unet, z, t, cond)
        return self.scorer(ScoreSample(z=z, t=t, cond=cond, prompt=self.prompts[i], output=out, reference=ref))

    # ------------------------------------------------------------ one iteration
    def __call__(self, step: int, g: torch.Generator) -> torch.Tensor:
        if self.due(step):
            self.recompute_masks(step, g)
        masks = self.masks or {}
        out = ref = None
        if self.step_samples:
            z, t, cond, idx = self.draw_batch(g)
            if self.kv_forget is None:
                anchors = cat_conditions([self.anchor_embeds[i : i + 1] for i in idx])
                with self.trainer.reference():  # before the edited pass: it swaps the weights in place
                    ref = predict(self.unet, z, t, anchors)
            ctx = double_backward_attention() if "csr" in self.betas else contextlib.nullcontext()
            with ctx:
                out = predict(self.unet, z, t, cond)
        if self.kv_forget is not None:
            l_forget = self.kv_forget(self.params)
        else:
            l_forget = F.mse_loss(out.float(), ref.float())
        loss = l_forget
        reg = torch.zeros((), device=l_forget.device)
        if "cip" in self.betas:
            reg = reg + self.betas["cip"] * cip_penalty(self.params, self.trainer.originals, masks)
        if "csr" in self.betas:
            reg = reg + self.betas["csr"] * csr_penalty(out.float().pow(2).mean(), self.params, masks)
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
            "loss_forget_mean": float(self.term_sums[0]) / n,
            "loss_retain_mean": float(self.term_sums[1]) / n,
            "loss_regularizer_mean": float(self.term_sums[2]) / n,
            "loss_retain_kv_mean": float(self.term_sums[3]) / n,
            "retain_prompts": len(self.retain),
        }


# ------------------------------------------------------------------ entry points
def erase(pipe, concept: ConceptSpec, config: Config, method: str = "trust",
          mask_callback: MaskCallback | None = None, scorer_options: dict[str, Any] | None = None) -> WeightDelta:
    """Run TRuST (or SalUn, ``method="salun"``) on ``pipe``; returns the delta, ``pipe`` is left unchanged.

    ``mask_callback(step, masks)`` is called at every mask recomputation with
    copies of the masks (by parameter name, relative to the UNet);
    ``scorer_options`` go to the scorer factory (e.g. ``detector=...``).
    """
    require_supported_unet(pipe.unet, method)
    if method == "salun" and (not config.static or config.regularizer != "none"):
        raise ValueError("salun is the static-mask, forgetting-loss-only case (mask_every=0, regularizer='none'); "
                         "use method 'trust' for dynamic masks or a regulariser")
    scope = config.scope or SCOPE
    options = {"clip_model": config.clip_model, **(scorer_options or {})}
    scorer_name, scorer = make_scorer(config.scorer, pipe, concept, **options)
    if config.optimizer != "adam":
        raise ValueError(f"{method} restores Adam's moments entry by entry outside the mask, which 8-bit "
                         "(blockwise quantised) moments do not allow; use optimizer='adam'")
    names = list(get_scope(scope).select(pipe.unet, prefix="unet."))
    with EditSession(pipe, names, method, config, concept) as session:
        trainer = Trainer.from_config(pipe.unet, scope, config, config.iterations,
                                      run_key=run_key(method, config, concept, scope_name=scope), description=method,
                                      originals_from=session.originals)
        step = TrustStep(pipe, trainer, concept, config, scorer, scorer_name, mask_callback)
        with MaskedUpdates(trainer.params, lambda: step.masks):
            result = trainer.run(step)
        session.metrics.update(result.metrics(), scope=trainer.scope.name, **step.metrics(result.steps))
    return session.delta


def erase_salun(pipe, concept: ConceptSpec, config: SalUnConfig, mask_callback: MaskCallback | None = None,
                scorer_options: dict[str, Any] | None = None) -> WeightDelta:
    return erase(pipe, concept, config, "salun", mask_callback, scorer_options)


def erase_kv(pipe, concept: ConceptSpec, config: KVConfig, mask_callback: MaskCallback | None = None,
             scorer_options: dict[str, Any] | None = None) -> WeightDelta:
    return erase(pipe, concept, config, "trust-kv", mask_callback, scorer_options)


def _work(spec: MethodSpec, config: Config, kind: str) -> MethodWork:
    kv = config.forget_loss == "kv"  # the K/V forgetting loss itself needs no UNet pass
    csr = "csr" in config.betas()
    pool = config.pool_size * config.n_steps * 2 if config.needs_target_pool() else 0
    retain = 0  # retain pools exist only for combination/conditional concepts
    per_mask = config.saliency_samples if config.scorer_draws_sample() else 0
    dynamic = bool(config.mask_every)
    masks_per_iter = per_mask / config.mask_every if dynamic else 0.0
    static = 0.0 if dynamic else per_mask  # the one mask: a reference and a gradient pass per sample
    draws = int(config.step_draws_sample()) + masks_per_iter
    nograd = (0 if kv else 1) + masks_per_iter + (0 if config.latents == "pool" else (config.n_steps - 1) * draws)
    return MethodWork(spec.name, spec.scope_for(config, kind), config.iterations, nograd, draws, 1,
                      setup_nograd=pool + retain + static, setup_grad=static, double_backward=csr,
                      notes=("static mask from %d samples" % per_mask) if not dynamic else "")


register(MethodSpec("trust", Config, erase,
                    "TRuST (reconstruction): dynamic saliency-masked fine-tuning of cross-attention q/k/v + CSR/CIP",
                    family="fine-tune", default_scope=SCOPE, work=_work, quick={"iterations": 16}))
register(MethodSpec("trust-kv", KVConfig, erase_kv,
                    "TRuST variant (reconstruction): its forgetting loss as UCE's source term on the "
                    "cross-attention K/V, dynamic masks, CSR",
                    family="fine-tune", default_scope=SCOPE, work=_work, quick={"iterations": 120}))
register(MethodSpec("salun", SalUnConfig, erase_salun,
                    "SalUn: static saliency-masked fine-tuning of cross-attention q/k/v, forgetting loss only",
                    family="fine-tune", default_scope=SCOPE, work=_work, quick={"iterations": 30}))
