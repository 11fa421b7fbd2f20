"""TRCE stage 2 (denoising trajectory steering) and the full two-stage TRCE.

Stage 2 ("trce-v") fine-tunes the ``visual`` scope (all self-attention
parameters and the cross-attention ``to_q``):

- Trajectories, sampled once with the ORIGINAL model (DDIM ``n_steps``, CFG
  3): ``n_trajectories`` of malicious prompts (``concept.target_prompts()``),
  keeping the latents of steps 0..``max_step``, and ``n_uncond``
  unconditional ones keeping every step's latent.  They are stored in a
  safetensors file (`TrajectoryCache`, never pickle) whose metadata carries a
  key hashing the UNet's tensors, the text conditioning, the prompts, the seed
  and the sampling settings; a file with another key is recomputed.
- Each iteration takes a trajectory (3 epochs over them, reshuffled per
  epoch), a step s uniform in 0..``max_step`` (the first half, 0..25 of 50),
  and builds guidance-enhanced targets with the frozen original model
  (beta = 15)::

      f_unsafe = eps(z,"") + beta (eps(z,c_m) - eps(z,""))
      f_safe   = eps(z,"") + beta (eps(z,c_s) - eps(z,""))

  with ``c_s`` the anchor prompt aligned with the malicious prompt ``c_m``.
- Loss: ``h(x) = max(0, ||x - f_safe||^2 - ||x - f_unsafe||^2 + m)``, m = 0.01,
  ``L_erase = (h(eps*(z,c_m,t)) + h(eps*(z,"",t))) / 2``, plus
  ``lambda ||eps*(z_u,"",t_u) - eps_ref(z_u,"",t_u)||^2`` (lambda = 100) on a random
  unconditional latent at any step, the reference being the original model (the paper's eps_theta).

Squared norms are MEANS over the latent's elements (per sample), as in the
authors' code.  An empty anchor is refused (`require_safe_anchor`: the hinge
could never fire), and each run records its hinge activity per quarter in the
delta's manifest (``metrics.hinge``; ``inert`` when no sample was ever active).  The authors'
release is one setting away per difference (``targets``, ``pairing``, ``pres_batch``,
``pres_pick``, ``order``, ``grad_reset``, ``pres_reference``, ``optimizer="adamw"``):
docs/methods/trce-v.md.

"trce" runs stage 1 (`erase_textual`, the closed-form K/V edit on first-[EoT]
embeddings) and then stage 2 on top of it (preservation reference: ``pres_reference``,
the original model or the stage-1 one), and returns ONE delta against the original weights
holding both the K/V edit and the visual edit.  The pipeline is left as it was.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from ...concepts.spec import ConceptSpec
from ...models.conditioning import cat_conditions, encode_conditions
from ...models.ddim import DDIMSampler
from ...models.delta import WeightDelta, resolve_tensors
from ...models.scopes import get_scope
from ...models.unet_io import predict, require_supported_unet
from ...training import EditSession, FineTuneConfig, Trainer, randint, run_key, step_generator
from ..base import MethodSpec, MethodWork, register
from ..closed_form import cross_attention_kv_names
from .textual import TRCETextualConfig, erase_textual
from .trajectories import TrajectoryCache, load_or_sample
from ..losses import guided_target

log = logging.getLogger(__name__)



class TRCEVisualConfig(FineTuneConfig):
    """Paper defaults (SD-1.4): 100 trajectories, 2000 unconditional, DDIM 50, CFG 3, steps 0..25,
    beta 15, margin 0.01, lambda 100, Adam lr 1e-6, 3 epochs (300 iterations).

    ``iterations=None`` means ``epochs * n_trajectories``.  ``trajectory_cache``
    is a ``.safetensors`` file or a folder (the file is then named by the cache
    key); None keeps the trajectories in memory only.  The SD default cache is
    large (~6.5 GB float32, almost all of it the 2000 x 50 unconditional latents).

    The ``shapes`` preset (small CPU-trained Shapes model): 24 trajectories and 48
    unconditional ones, 25 DDIM steps (first half = steps 0..12) and lr 1e-3, large
    enough for 72 iterations to move the visual weights and erase (measurements:
    docs/experiments/trce.md).
    """

    lr: float = 1e-6
    n_trajectories: int = 100
    n_uncond: int = 2000
    n_steps: int = 50
    max_step: int = 25
    guidance: float = 3.0
    beta: float = 15.0
    margin: float = 0.01
    lambda_pres: float = 100.0
    epochs: int = 3
    trajectory_cache: str | None = None
    sample_batch: int = 8
    # The authors' release, one setting away each (docs/methods/trce-v.md):
    # "release": f = eps(z,c) + beta (eps(z,c) - eps(z,"")), the guidance taken from the conditional output.
    targets: Literal["paper", "release"] = "paper"
    # "release": the latent AFTER step s with step s's timestep; the preservation latent likewise, with a
    # timestep drawn uniformly within its step's interval of the training timesteps.
    pairing: Literal["paper", "release"] = "paper"
    pres_batch: int = 1  # unconditional latents per iteration in the preservation term (release: 4)
    # "sequential": iteration i of an epoch takes unconditional latents i*pres_batch .. (i+1)*pres_batch - 1.
    pres_pick: Literal["random", "sequential"] = "random"
    order: Literal["shuffled", "sequential"] = "shuffled"  # trajectories per epoch (release: file order)
    grad_reset: Literal["step", "never"] = "step"  # "never": gradients add up over the run (release)
    # Preservation reference of full TRCE: the original model (the paper's eps_theta) or the stage-1 model.
    pres_reference: Literal["original", "stage1"] = "original"

    EXTENSIONS: ClassVar[tuple[str, ...]] = ("targets", "pairing", "pres_batch", "pres_pick", "order", "grad_reset",
                                             "pres_reference")
    PRESETS: ClassVar[dict] = {
        "shapes": {"n_trajectories": 24, "n_uncond": 48, "n_steps": 25, "max_step": 12, "lr": 1e-3},
    }

    def total_iterations(self) -> int:
        return self.iterations if self.iterations is not None else self.epochs * self.n_trajectories


class TRCEConfig(TRCEVisualConfig, TRCETextualConfig):
    """Both stages' settings (stage 1: TRCETextualConfig's fields; stage 2: TRCEVisualConfig's)."""

    PRESETS: ClassVar[dict] = {
        "shapes": {**TRCETextualConfig.PRESETS["shapes"], **TRCEVisualConfig.PRESETS["shapes"]},
    }


# ------------------------------------------------------------------ the loss
def hinge_values(x: torch.Tensor, f_safe: torch.Tensor, f_unsafe: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-sample ||x - f_safe||^2 - ||x - f_unsafe||^2 + m before clamping (squared norms as element means)."""
    d_safe = (x - f_safe).pow(2).flatten(1).mean(1)
    d_unsafe = (x - f_unsafe).pow(2).flatten(1).mean(1)
    return d_safe - d_unsafe + margin


def triplet_margin(x: torch.Tensor, f_safe: torch.Tensor, f_unsafe: torch.Tensor, margin: float) -> torch.Tensor:
    """h(x) = max(0, ||x - f_safe||^2 - ||x - f_unsafe||^2 + m), squared norms as per-element means; batch mean."""
    return torch.clamp(hinge_values(x, f_safe, f_unsafe, margin), min=0).mean()


def require_safe_anchor(concept: ConceptSpec, method: str) -> None:
    """Refuse a concept whose anchor (for any target) is empty: the triplet hinge could never fire.

    With c_s = "" the safe target is eps(z,"") itself; with d = eps(z,c_m) - eps(z,"") the hinge at
    the conditional prediction x = eps(z,"") + d is h = -beta (beta - 2) ||d||^2 + m, and at the
    unconditional one -beta^2 ||d||^2 + m: both negative once ||d||^2 > m / (beta (beta - 2))
    (5e-5 at beta 15, m 0.01), so no sample is ever active and the gradient of L_erase is zero.
    """
    empty = [t for t in concept.targets if not concept.anchor_for(t).strip()]
    if empty:
        raise ValueError(f"{method} needs a safe anchor: {concept.name!r} maps {empty[0]!r} to the empty prompt, "
                         f"where stage 2's hinge never fires; give one with --anchor")


def require_live_stage2(concept: ConceptSpec, config: TRCEVisualConfig, method: str) -> None:
    """Refuse settings under which stage 2 cannot move a weight: an empty anchor (`require_safe_anchor`),
    an anchor equal to its target or ``beta = 0`` (the safe and unsafe targets coincide, so the hinge is
    the constant m and has no gradient), ``lr <= 0`` or no iteration."""
    require_safe_anchor(concept, method)
    same = [t for t in concept.targets if concept.anchor_for(t).strip().lower() == t.strip().lower()]
    why = (f"{concept.name!r} anchors {same[0]!r} to itself" if same else "beta=0" if config.beta == 0
           else f"lr={config.lr}" if config.lr <= 0 else "0 iterations" if config.total_iterations() < 1 else None)
    if why:
        raise ValueError(f"{method}: with {why} stage 2 moves no weight (its safe and unsafe targets coincide or "
                         "nothing is trained); give another --anchor or setting")


def warn_if_inert(activity: "HingeActivity", method: str) -> dict:
    """The activity summary; a run whose hinge fired on no sample is logged as a warning and marked ``inert``."""
    summary = activity.summary()
    if summary["samples"] and summary["inert"]:
        log.warning("%s: the stage-2 hinge was active on no sample of the run, so only the preservation term "
                    "moved the visual weights (metrics.hinge.inert)", method)
    return summary


class HingeActivity:
    """Per-quarter record of the hinge: the fraction of active samples (h > 0) and the mean margin
    ||x - f_unsafe||^2 - ||x - f_safe||^2 (positive: nearer the safe target), over both hinge terms."""

    def __init__(self, iterations: int):
        self.iterations = max(1, iterations)
        self.active = [0, 0, 0, 0]
        self.count = [0, 0, 0, 0]
        self.margin_sum = [0.0, 0.0, 0.0, 0.0]

    def record(self, step: int, values: torch.Tensor, margin: float) -> None:
        q = min(3, step * 4 // self.iterations)
        v = values.detach().float().cpu()
        self.active[q] += int((v > 0).sum())
        self.count[q] += int(v.numel())
        self.margin_sum[q] += float((margin - v).sum())

    def summary(self) -> dict:
        quarters = [i for i in range(4) if self.count[i]]
        return {"active_fraction": [self.active[i] / self.count[i] for i in quarters],
                "mean_margin": [self.margin_sum[i] / self.count[i] for i in quarters],
                "samples": [self.count[i] for i in quarters], "inert": sum(self.active) == 0}


# ------------------------------------------------------------------ trajectories
class VisualStep:
    """One TRCE stage-2 iteration.

    ``original``: weights (UNet-relative names) that turn the live UNet into
    the original model; ``stage1``: those that turn it into the stage-1 model
    (None: the same as ``original``).
    """

    def __init__(self, pipe, trainer: Trainer, concept: ConceptSpec, config: TRCEVisualConfig, cache: TrajectoryCache,
                 original: dict[str, torch.Tensor], stage1: dict[str, torch.Tensor] | None = None):
        self.unet, self.trainer, self.config, self.cache = pipe.unet, trainer, config, cache
        self.original, self.stage1 = original, stage1
        self.prompts = concept.target_prompts()
        self.cond = encode_conditions(pipe, self.prompts)
        self.anchor = encode_conditions(pipe, concept.anchor_prompts())
        self.uncond = encode_conditions(pipe, [""])
        self.sampler = DDIMSampler(pipe.scheduler, config.n_steps)
        self.activity = HingeActivity(config.total_iterations())
        self.grad_sum: dict[int, torch.Tensor] = {}  # grad_reset="never": every iteration's gradient, summed

    def _timestep(self, s: int, g: torch.Generator, drawn: bool) -> int:
        """Step s's DDIM timestep, or (``drawn``) one uniform in the step's interval of training timesteps."""
        if not drawn:
            return self.sampler.timestep(s)
        width = self.sampler.scheduler.config.num_train_timesteps // self.config.n_steps
        return (self.config.n_steps - 1 - s) * width + randint(width, g)

    def sample(self, step: int, g: torch.Generator):
        """(z, t, prompt index, z_u, t_u) of this iteration; epochs visit every trajectory once.

        ``z_u`` holds ``pres_batch`` latents and ``t_u`` their timesteps.  With ``pairing="release"``
        a latent is the one after its step, and the preservation timesteps are drawn in their steps' intervals.
        """
        cfg, n = self.config, self.cache.n
        epoch, pos = divmod(step, n)
        j = pos if cfg.order == "sequential" else int(torch.randperm(n, generator=step_generator(cfg.seed, -(epoch + 2)))[pos])
        after = int(cfg.pairing == "release")
        s = randint(cfg.max_step + 1, g)
        dev = self.unet.device
        z = self.cache.latent("cond", j, s + after).to(dev, self.unet.dtype)
        zu, tu = [], []
        for k in range(cfg.pres_batch):
            u = (pos * cfg.pres_batch + k) % self.cache.n_uncond if cfg.pres_pick == "sequential" \
                else randint(self.cache.n_uncond, g)
            su = randint(cfg.n_steps, g)
            zu.append(self.cache.latent("uncond", u, su + after))
            tu.append(self._timestep(su, g, drawn=bool(after)))
        zu = torch.cat(zu).to(dev, self.unet.dtype)
        return z, self.sampler.timestep(s), int(self.cache.prompt_index[j]), zu, tu

    def __call__(self, step: int, g: torch.Generator) -> torch.Tensor:
        cfg = self.config
        z, t, p, zu, tu = self.sample(step, g)
        c_m, c_s, empty = self.cond[p : p + 1], self.anchor[p : p + 1], self.uncond
        dev, b = z.device, zu.shape[0]
        times = torch.tensor([t, t, t, *tu], device=dev)
        if self.stage1 is None:  # the preservation reference is the original model: one reference pass
            with self.trainer.reference(self.original):
                ref = predict(self.unet, torch.cat([z, z, z, zu]), times, cat_conditions([empty, c_m, c_s] + [empty] * b))
            eps_u, eps_m, eps_s, eps_pres = ref[0:1], ref[1:2], ref[2:3], ref[3:]
        else:
            with self.trainer.reference(self.original):
                eps_u, eps_m, eps_s = predict(self.unet, torch.cat([z, z, z]), t,
                                              cat_conditions([empty, c_m, c_s])).chunk(3)
            with self.trainer.reference(self.stage1):
                eps_pres = predict(self.unet, zu, times[3:], cat_conditions([empty] * b))
        f_unsafe = guided_target(eps_u, eps_m, cfg.beta, cfg.targets)
        f_safe = guided_target(eps_u, eps_s, cfg.beta, cfg.targets)
        out = predict(self.unet, torch.cat([z, z, zu]), torch.cat([times[:2], times[3:]]),
                      cat_conditions([c_m, empty] + [empty] * b))
        out_m, out_u, out_pres = out[0:1], out[1:2], out[2:]
        h_m = hinge_values(out_m, f_safe, f_unsafe, cfg.margin)
        h_u = hinge_values(out_u, f_safe, f_unsafe, cfg.margin)
        self.activity.record(step, torch.cat([h_m, h_u]), cfg.margin)
        l_erase = (torch.clamp(h_m, min=0).mean() + torch.clamp(h_u, min=0).mean()) / 2
        loss = l_erase + cfg.lambda_pres * F.mse_loss(out_pres, eps_pres)
        return self._accumulated(loss) if cfg.grad_reset == "never" else loss

    def _accumulated(self, loss: torch.Tensor) -> torch.Tensor:
        """A loss of the same value whose gradient is the sum of every iteration's so far (no reset)."""
        params = list(self.trainer.params.values())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total = loss.detach()
        for p, grad in zip(params, grads):
            if grad is not None:
                self.grad_sum[id(p)] = self.grad_sum.get(id(p), 0) + grad.detach()
            if id(p) in self.grad_sum:
                total = total + (self.grad_sum[id(p)] * (p - p.detach())).sum()
        return total


# ------------------------------------------------------------------ methods
def erase_visual(pipe, concept: ConceptSpec, config: TRCEVisualConfig) -> WeightDelta:
    """TRCE stage 2 alone, from the current model (which is also its preservation reference)."""
    require_supported_unet(pipe.unet, "trce-v")
    require_live_stage2(concept, config, "trce-v")
    cache = load_or_sample(pipe, concept.target_prompts(), config)
    scope = config.scope or "visual"
    names = list(get_scope(scope).select(pipe.unet, prefix="unet."))
    with EditSession(pipe, names, "trce-v", config, concept) as session:
        trainer = Trainer.from_config(pipe.unet, scope, config, config.total_iterations(),
                                      run_key=run_key("trce-v", config, concept, scope_name=scope),
                                      description="trce-v", originals_from=session.originals)
        step_fn = VisualStep(pipe, trainer, concept, config, cache, original=trainer.originals)
        result = trainer.run(step_fn)
        session.metrics.update(result.metrics(), scope=trainer.scope.name, trajectories=cache.n,
                               uncond_trajectories=cache.n_uncond, hinge=warn_if_inert(step_fn.activity, "trce-v"))
    return session.delta


@torch.no_grad()
def _write_into(pipe, tensors: dict[str, torch.Tensor]) -> None:
    live = resolve_tensors(pipe, tensors)
    for n, v in tensors.items():
        live[n].copy_(v)


def erase(pipe, concept: ConceptSpec, config: TRCEConfig) -> WeightDelta:
    """Full TRCE: stage 1 (K/V closed form) then stage 2 on top; one delta against the original weights."""
    require_supported_unet(pipe.unet, "trce")
    require_live_stage2(concept, config, "trce")
    cache = load_or_sample(pipe, concept.target_prompts(), config)  # with the ORIGINAL model
    scope = config.scope or "visual"
    names = sorted(set(cross_attention_kv_names(pipe.unet)) | set(get_scope(scope).select(pipe.unet, prefix="unet.")))
    textual = TRCETextualConfig(**{k: getattr(config, k) for k in TRCETextualConfig.model_fields})
    with EditSession(pipe, names, "trce", config, concept) as session:
        stage1 = erase_textual(pipe, concept, textual)  # leaves pipe unchanged
        _write_into(pipe, stage1.tensors)
        # The stage-2 reference is the stage-1 model: reuse the session's snapshot for every scope tensor
        # stage 1 left alone (all of them with the default, disjoint scopes), copy only the others.
        untouched = {n: t for n, t in session.originals.items() if n not in stage1.tensors}
        stage1_names, stage1_id, stage1_metrics = stage1.names, stage1.delta_id, stage1.manifest.metrics
        del stage1  # the edit now lives in the UNet: keep no second copy of the stage-1 tensors
        trainer = Trainer.from_config(pipe.unet, scope, config, config.total_iterations(),
                                      run_key=run_key("trce", config, concept, scope_name=scope), description="trce",
                                      originals_from=untouched)
        dev = trainer.device
        original = {**trainer.originals,
                    **{n[len("unet."):]: session.originals[n].to(dev) for n in stage1_names if n.startswith("unet.")}}
        stage1_ref = trainer.originals if config.pres_reference == "stage1" else None
        step_fn = VisualStep(pipe, trainer, concept, config, cache, original=original, stage1=stage1_ref)
        result = trainer.run(step_fn)
        session.metrics.update(result.metrics(), scope=trainer.scope.name, trajectories=cache.n,
                               uncond_trajectories=cache.n_uncond, stage1_delta=stage1_id,
                               stage1=stage1_metrics, hinge=warn_if_inert(step_fn.activity, "trce"))
    return session.delta


def _work(spec: MethodSpec, config: TRCEVisualConfig, kind: str) -> MethodWork:
    setup = config.n_trajectories * config.max_step * 2 + config.n_uncond * (config.n_steps - 1)
    return MethodWork(spec.name, spec.scope_for(config, kind), config.total_iterations(), 4, 3, 3,
                      setup_nograd=setup,
                      notes="one-off trajectory sampling (cacheable: trajectory_cache) reported separately")


_QUICK = {"n_trajectories": 8, "n_uncond": 16}
register(MethodSpec("trce-v", TRCEVisualConfig, erase_visual,
                    "TRCE stage 2: contrastive trajectory steering of the visual parameters",
                    family="fine-tune", default_scope="visual", work=_work, quick=_QUICK))
register(MethodSpec("trce", TRCEConfig, erase, "TRCE: stage 1 K/V closed form, then stage 2 visual fine-tuning; one delta",
                    family="fine-tune", default_scope="visual", work=_work, quick=_QUICK,
                    closed_form_scope="cross_attn_kv"))
