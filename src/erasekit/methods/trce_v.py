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
  ``lambda ||eps*(z_u,"",t_u) - eps_stage1(z_u,"",t_u)||^2`` (lambda = 100) on a
  random unconditional latent at any step.

Squared norms are MEANS over the latent's elements (per sample), as in the
authors' code.  An empty anchor is refused (`require_safe_anchor`: the hinge
could never fire), and each run records its hinge activity per quarter in the
delta's manifest (``metrics.hinge``).  Differences from the authors' code:
docs/faithfulness.md.

"trce" runs stage 1 (`erase_textual`, the closed-form K/V edit on first-[EoT]
embeddings) and then stage 2 on top of it, with the stage-1 model as the
preservation reference, and returns ONE delta against the original weights
holding both the K/V edit and the visual edit.  The pipeline is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from safetensors import safe_open

from ..concepts.spec import ConceptSpec
from ..models.conditioning import cat_conditions, encode_conditions
from ..models.ddim import DDIMSampler
from ..models.delta import WeightDelta, fingerprint, resolve_tensors
from ..models.scopes import get_scope
from ..models.unet_io import latent_shape, predict, require_supported_unet
from ..training import EditSession, FineTuneConfig, Trainer, randint, run_key, step_generator
from ..training.checkpoints import save_tensors_atomic
from .base import MethodSpec, MethodWork, register
from .closed_form import cross_attention_kv_names
from .preservation import text_fingerprint
from .trce import TRCETextualConfig, erase_textual

log = logging.getLogger(__name__)

CACHE_FORMAT = "erasekit-trce-trajectories"


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


def guided_target(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, beta: float) -> torch.Tensor:
    """eps(z,"") + beta (eps(z,c) - eps(z,""))."""
    return eps_uncond + beta * (eps_cond - eps_uncond)


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
                "samples": [self.count[i] for i in quarters]}


# ------------------------------------------------------------------ trajectories
class TrajectoryCache:
    """Sampled latents: ``cond`` (n, max_step+1, C, H, W), ``uncond`` (n_uncond, n_steps, C, H, W),
    ``prompt_index`` (n,).  File-backed caches read single latents lazily."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None, path: Path | None = None):
        self.path, self._tensors, self._fh = path, tensors, None
        if tensors is None:
            self._fh = safe_open(str(path), framework="pt")
        self.prompt_index = self._get("prompt_index")
        self.n = int(self.prompt_index.shape[0])
        self.n_uncond = int(self._shape("uncond")[0])

    def _get(self, name: str) -> torch.Tensor:
        return self._tensors[name] if self._tensors is not None else self._fh.get_tensor(name)

    def _shape(self, name: str) -> list[int]:
        return list(self._tensors[name].shape) if self._tensors is not None else self._fh.get_slice(name).get_shape()

    def latent(self, name: str, i: int, s: int) -> torch.Tensor:
        """(1, C, H, W) latent of trajectory i at step s (name 'cond' or 'uncond')."""
        if self._tensors is not None:
            return self._tensors[name][i, s].unsqueeze(0)
        return self._fh.get_slice(name)[i : i + 1, s : s + 1][:, 0]


def unet_fingerprint(unet) -> str:
    h = hashlib.sha256()
    for n, t in sorted(unet.state_dict().items()):
        h.update(f"{n}:{fingerprint(t)}".encode())
    return h.hexdigest()


def cache_key(pipe, prompts: list[str], config: TRCEVisualConfig) -> str:
    payload = {
        "format": CACHE_FORMAT, "unet": unet_fingerprint(pipe.unet), "text": text_fingerprint(pipe),
        "prompts": prompts, "seed": config.seed, "n": config.n_trajectories, "n_uncond": config.n_uncond,
        "n_steps": config.n_steps, "max_step": config.max_step, "guidance": config.guidance,
        "scheduler": dict(pipe.scheduler.config), "shape": list(latent_shape(pipe.unet)),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


@torch.no_grad()
def sample_trajectories(pipe, prompts: list[str], config: TRCEVisualConfig) -> dict[str, torch.Tensor]:
    """Sample the trajectories with the pipeline's CURRENT (original) UNet; every kept latent, on CPU."""
    unet, bs = pipe.unet, max(1, config.sample_batch)
    sampler = DDIMSampler(pipe.scheduler, config.n_steps)
    if not 0 <= config.max_step < config.n_steps:
        raise ValueError(f"max_step {config.max_step} must lie in 0..{config.n_steps - 1}")
    g = step_generator(config.seed, -1)  # a stream of its own, apart from the training steps
    order = torch.randperm(len(prompts), generator=g)
    index = torch.stack([order[i % len(prompts)] for i in range(config.n_trajectories)])
    embeds, uncond = encode_conditions(pipe, prompts), encode_conditions(pipe, [""])
    cond, unc = [], []
    for lo in range(0, config.n_trajectories, bs):
        idx = index[lo : lo + bs]
        z = torch.randn(latent_shape(unet, len(idx)), generator=g).to(unet.device, unet.dtype)
        cond.append(sampler.denoise(unet, z, 0, config.max_step, embeds[idx.to(embeds.device)], uncond,
                                    config.guidance, keep_all=True)[1].cpu())
    for lo in range(0, config.n_uncond, bs):
        z = torch.randn(latent_shape(unet, min(bs, config.n_uncond - lo)), generator=g).to(unet.device, unet.dtype)
        unc.append(sampler.denoise(unet, z, 0, config.n_steps - 1, None, uncond, 1.0, keep_all=True)[1].cpu())
    return {"cond": torch.cat(cond), "uncond": torch.cat(unc), "prompt_index": index}


def load_or_sample(pipe, prompts: list[str], config: TRCEVisualConfig) -> TrajectoryCache:
    """Reuse the cache named by ``config.trajectory_cache`` when its key matches, else sample (and store)."""
    if config.n_trajectories < 1 or config.n_uncond < 1:
        raise ValueError("TRCE stage 2 needs n_trajectories >= 1 and n_uncond >= 1")
    key = cache_key(pipe, prompts, config)
    path = None
    if config.trajectory_cache:
        path = Path(config.trajectory_cache).expanduser()
        if path.suffix != ".safetensors":
            path = path / f"trce-trajectories-{key}.safetensors"
        if path.exists():
            try:
                with safe_open(str(path), framework="pt") as fh:
                    meta = fh.metadata() or {}
                if meta.get("format") == CACHE_FORMAT and meta.get("key") == key:
                    log.info("reusing TRCE trajectories from %s", path)
                    return TrajectoryCache(path=path)
                log.warning("trajectory cache %s was made for another model/prompts/settings; resampling", path)
            except Exception as err:  # unreadable file: resample over it
                log.warning("trajectory cache %s is unreadable (%s); resampling", path, str(err).splitlines()[0])
    tensors = sample_trajectories(pipe, prompts, config)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": CACHE_FORMAT, "key": key, "prompts": json.dumps(prompts),
                "settings": json.dumps({k: getattr(config, k) for k in
                                        ("seed", "n_trajectories", "n_uncond", "n_steps", "max_step", "guidance")})}
        save_tensors_atomic(tensors, meta, path)
    return TrajectoryCache(tensors=tensors)


# ------------------------------------------------------------------ one iteration
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

    def sample(self, step: int, g: torch.Generator):
        """(z, t, prompt index, z_u, t_u) of this iteration; epochs visit every trajectory once, reshuffled."""
        cfg, n = self.config, self.cache.n
        epoch, pos = divmod(step, n)
        j = int(torch.randperm(n, generator=step_generator(cfg.seed, -(epoch + 2)))[pos])
        s = randint(cfg.max_step + 1, g)
        u, su = randint(self.cache.n_uncond, g), randint(cfg.n_steps, g)
        dev = self.unet.device
        z = self.cache.latent("cond", j, s).to(dev, self.unet.dtype)
        zu = self.cache.latent("uncond", u, su).to(dev, self.unet.dtype)
        return z, self.sampler.timestep(s), int(self.cache.prompt_index[j]), zu, self.sampler.timestep(su)

    def __call__(self, step: int, g: torch.Generator) -> torch.Tensor:
        cfg = self.config
        z, t, p, zu, tu = self.sample(step, g)
        c_m, c_s, empty = self.cond[p : p + 1], self.anchor[p : p + 1], self.uncond
        dev = z.device
        if self.stage1 is None:  # stage-1 model == original: one reference pass of 4
            with self.trainer.reference(self.original):
                ref = predict(self.unet, torch.cat([z, z, z, zu]), torch.tensor([t, t, t, tu], device=dev),
                              cat_conditions([empty, c_m, c_s, empty]))
            eps_u, eps_m, eps_s, eps_pres = ref.chunk(4)
        else:
            with self.trainer.reference(self.original):
                eps_u, eps_m, eps_s = predict(self.unet, torch.cat([z, z, z]), t,
                                              cat_conditions([empty, c_m, c_s])).chunk(3)
            with self.trainer.reference(self.stage1):
                eps_pres = predict(self.unet, zu, tu, empty)
        f_unsafe = guided_target(eps_u, eps_m, cfg.beta)
        f_safe = guided_target(eps_u, eps_s, cfg.beta)
        out_m, out_u, out_pres = predict(self.unet, torch.cat([z, z, zu]), torch.tensor([t, t, tu], device=dev),
                                         cat_conditions([c_m, empty, empty])).chunk(3)
        h_m = hinge_values(out_m, f_safe, f_unsafe, cfg.margin)
        h_u = hinge_values(out_u, f_safe, f_unsafe, cfg.margin)
        self.activity.record(step, torch.cat([h_m, h_u]), cfg.margin)
        l_erase = (torch.clamp(h_m, min=0).mean() + torch.clamp(h_u, min=0).mean()) / 2
        return l_erase + cfg.lambda_pres * F.mse_loss(out_pres, eps_pres)


# ------------------------------------------------------------------ methods
def erase_visual(pipe, concept: ConceptSpec, config: TRCEVisualConfig) -> WeightDelta:
    """TRCE stage 2 alone, from the current model (which is also its preservation reference)."""
    require_supported_unet(pipe.unet, "trce-v")
    require_safe_anchor(concept, "trce-v")
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
                               uncond_trajectories=cache.n_uncond, hinge=step_fn.activity.summary())
    return session.delta


@torch.no_grad()
def _write_into(pipe, tensors: dict[str, torch.Tensor]) -> None:
    live = resolve_tensors(pipe, tensors)
    for n, v in tensors.items():
        live[n].copy_(v)


def erase(pipe, concept: ConceptSpec, config: TRCEConfig) -> WeightDelta:
    """Full TRCE: stage 1 (K/V closed form) then stage 2 on top; one delta against the original weights."""
    require_supported_unet(pipe.unet, "trce")
    require_safe_anchor(concept, "trce")
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
        step_fn = VisualStep(pipe, trainer, concept, config, cache, original=original, stage1=trainer.originals)
        result = trainer.run(step_fn)
        session.metrics.update(result.metrics(), scope=trainer.scope.name, trajectories=cache.n,
                               uncond_trajectories=cache.n_uncond, stage1_delta=stage1_id,
                               stage1=stage1_metrics, hinge=step_fn.activity.summary())
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
