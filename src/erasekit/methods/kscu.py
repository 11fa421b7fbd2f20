"""KSCU — Key Step Concept Unlearning (Zhang et al.): fine-tune only at the steps that decide the concept.

Schedule (`key_step_schedule`): an active interval [S, n_steps - 1] is
traversed repeatedly (S, S+1, ..., 49, S, ...); after 8 full traversals S is
raised by one, up to ``ceil(0.9 n_steps) - 1`` (44 for 50 steps); the sequence
is cut at the iteration budget.  Defaults by concept kind (in 50-step units):
unsafe/object/attribute 750 iterations from S = 14, style 500 from S = 24,
instance 200 from S = 40.

Latents: the model BEING EDITED denoises seeded noise at CFG 3 on a concept
prompt (``prompts``: the concept string, or the synonym x template grid) down to
the scheduled step.  While the schedule climbs (next step
s + 1), the running trajectory is reused and only advanced by one DDIM step;
when it wraps around, a new trajectory starts from fresh seeded noise (and a
freshly sampled target prompt).  The running latent is part of the
checkpointed state, so a resumed run continues the same trajectory.

Loss, with ``eps`` the frozen original model, g = 1, lambda2 = 1e-4 and
``lambda1(t) = (1000 - t) * 2e-5`` (t the training timestep of step s)::

    L = || eps*(z_s, c~, t) - [eps(z_s,"") - g (eps(z_s,c) - eps(z_s,""))] ||^2
      + lambda2 || eps*(z_s, "", t) - [eps(z_s,"") - lambda1(t) (eps(z_s,c) - eps(z_s,""))] ||^2

(squared norms are means over elements).  ``c~`` is the concept prompt's
embedding; in the last 5% of iterations it is a reworded prompt (``augment``: the
authors' 10 rewordings, or erasekit's template swap / shuffle / deletion / phrase
affix) whose embedding also gets Gaussian noise of std 1e-5.

Scope by kind: unsafe/object/attribute -> ``non_cross_attn`` (every
Linear/Conv outside cross-attention); style/instance -> ``cross_attn``.
Adam lr 1e-5, batch 1.  The paper's "750 iterations for several instances"
is not inferred automatically (a concept's targets are synonyms, not
instances): set ``iterations=750`` for such concepts.
"""

from __future__ import annotations

import math
import string
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from ..concepts.spec import ConceptSpec
from ..models.conditioning import TextCondition, cat_conditions, encode_conditions
from ..models.ddim import DDIMSampler
from ..models.delta import WeightDelta
from ..models.unet_io import initial_latents, predict, require_supported_unet
from ..training import FineTuneConfig, Trainer, fine_tune, randint, step_generator
from .base import MethodSpec, MethodWork, register
from .retain import KVRetainTerm, RetainFields, RetainTerm
from .losses import kscu_targets

# Paper defaults per concept kind: (iterations, first key step S in 50-step units).
KIND_DEFAULTS = {
    "unsafe": (750, 14), "object": (750, 14), "attribute": (750, 14),
    "style": (500, 24), "instance": (200, 40),
}
KIND_SCOPES = {
    "unsafe": "non_cross_attn", "object": "non_cross_attn", "attribute": "non_cross_attn",
    "style": "cross_attn", "instance": "cross_attn",
}
# The authors' code rewords the concept over 10 templates of its kind's category (data, as released).
RELEASE_TEMPLATES = {
    "concept": ("an expression of {}", "a portrayal of {}", "an illustration of the concept {}",
                "{} represented in symbolic form", "a thoughtful depiction of the idea of {}",
                "an abstract representation of {}", "a visualization exploring the notion of {}",
                "{} brought to life through art", "an evocative rendering of {}", "{} expressed in an artistic form"),
    "style": ("a painting in the style of {}", "an artwork reminiscent of {}", "a piece inspired by the style of {}",
              "a {}-inspired painting", "a vivid portrayal echoing {}", "a canvas channeling the look of {}",
              "an imaginative work in {} style", "the unique style of {} recreated",
              "artwork reflecting the approach of {}", "an image rendered in {} style"),
    "object": ("a photo of {}", "an image of {}", "a detailed picture of {}", "{} captured in natural light",
               "a high-resolution image of {}", "an artistic close-up of {}", "{} in a dynamic composition",
               "a portrait of {} with sharp details", "a scene featuring {} with vibrant colors",
               "a snapshot highlighting {}"),
}
RELEASE_CATEGORY = {"unsafe": "concept", "style": "style", "object": "object", "attribute": "object", "instance": "object"}
ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
PREFIXES = ("a photo of", "an image of", "high quality", "a detailed picture of", "a close-up of", "beautiful")
SUFFIXES = ("high quality", "detailed", "4k", "in the morning", "trending on artstation", "sharp focus")


def default_cap(n_steps: int) -> int:
    """ceil(0.9 n_steps) - 1 (44 for 50 steps), computed in integers."""
    return (9 * n_steps + 9) // 10 - 1


def key_step_schedule(iterations: int, start: int, n_steps: int = 50, traversals_per_raise: int = 8,
                      cap: int | None = None) -> list[int]:
    """The key step s of every iteration: traverse [S, n_steps-1], raise S every 8 traversals, cap it.

    >>> key_step_schedule(5, 47)
    [47, 48, 49, 47, 48]
    """
    cap = default_cap(n_steps) if cap is None else cap
    if not 0 <= start < n_steps:
        raise ValueError(f"start step {start} is outside 0..{n_steps - 1}")
    if traversals_per_raise < 1:
        raise ValueError("traversals_per_raise must be >= 1")
    out: list[int] = []
    first, traversals = start, 0
    while len(out) < iterations:
        out.extend(range(first, n_steps))
        traversals += 1
        if traversals % traversals_per_raise == 0 and first < cap:
            first += 1
    return out[:iterations]


class KSCUConfig(FineTuneConfig, RetainFields):
    """Paper defaults (SD-1.4): budgets/start steps by kind, DDIM 50, CFG 3, g 1, lambda2 1e-4, Adam lr 1e-5.

    ``iterations``/``start_step`` None take the kind's default; ``start_step``
    counts in ``n_steps`` units, and the kind defaults (given for 50 steps) are
    scaled by ``n_steps / 50``, as is the cap unless ``cap`` is set.
    ``prompts``: "bare" (the concept string alone, as the authors' code) or "grid";
    ``augment``: the authors' rewordings ("release") or erasekit's ("erasekit").

    The ``shapes`` preset (the small CPU-trained Shapes model): 25 DDIM steps, lr 1e-4,
    a fifth of the paper's iterations, negative guidance 3 (at g = 1 the target only
    reaches the unconditional model, which draws the shape at chance), the grid with
    erasekit's rewordings, and attributes on the cross-attention K/V at lr 1e-3 with
    the kept prompts' keys and values held (the paper's attribute scope takes orange
    with red).  Measurements: docs/experiments/kscu.md.

    Options beyond the paper (off at their defaults): the shared retain fields
    (`erasekit.methods.retain.RetainFields`: ``preserve_weight`` and its pool, batch and
    latents; ``preserve_kv_weight``); ``by_kind``: field values that replace
    this config's for concepts of one kind (`for_kind`; an explicit override given with a
    preset wins over the preset's entries).
    """

    lr: float = 1e-5
    start_step: int | None = Field(None, description="first key step S in n_steps units (None: the kind's default)")
    n_steps: int = Field(50, description="DDIM steps of the trajectory the key steps index")
    traversals_per_raise: int = Field(8, description="full traversals of [S, n_steps-1] before S is raised by one")
    cap: int | None = Field(None, description="highest S (None: ceil(0.9 n_steps) - 1)")
    iterations_by_kind: dict[str, int] = Field(
        {k: v[0] for k, v in KIND_DEFAULTS.items()}, description="iteration budget per concept kind (iterations=None)")
    guidance: float = Field(3.0, description="CFG scale the edited model generates the training latent with")
    negative_guidance: float = Field(1.0, description="g in the erase target eps_u - g (eps_c - eps_u)")
    lambda2: float = Field(1e-4, description="weight of the unconditional anchor loss")
    lambda1_rate: float = Field(2e-5, description="lambda1(t) = (1000 - t) * lambda1_rate in the anchor target")
    augment_fraction: float = Field(0.05, description="last fraction of iterations trained on reworded prompts")
    embed_noise: float = Field(1e-5, description="std of the Gaussian noise on a reworded prompt's embedding")
    by_kind: dict[str, dict[str, Any]] = Field(
        {}, description="field values replacing this config's for concepts of one kind")
    prompts: Literal["bare", "grid"] = Field(
        "bare", description="'bare': the concept string alone (authors' code); 'grid': synonyms x templates")
    augment: Literal["release", "erasekit"] = Field(
        "release", description="rewordings: the authors' 10 templates, or erasekit's swaps, shuffles and affixes")

    EXTENSIONS: ClassVar[tuple[str, ...]] = ("by_kind",)
    PRESETS: ClassVar[dict] = {
        "shapes": {"n_steps": 25, "lr": 1e-4, "negative_guidance": 3.0, "prompts": "grid", "augment": "erasekit",
                   "iterations_by_kind": {"unsafe": 150, "object": 150, "attribute": 150, "style": 100,
                                          "instance": 40},
                   "by_kind": {"attribute": {"scope": "cross_attn_kv", "lr": 1e-3, "preserve_kv_weight": 10.0}}},
    }

    @field_validator("by_kind")
    @classmethod
    def _by_kind(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for kind, values in v.items():
            if kind not in KIND_DEFAULTS:
                raise ValueError(f"by_kind: unknown concept kind {kind!r} (kinds: {', '.join(KIND_DEFAULTS)})")
            bad = sorted(set(values) - set(cls.model_fields) | ({"by_kind", "seed"} & set(values)))
            if bad:
                raise ValueError(f"by_kind[{kind!r}]: {', '.join(bad)} cannot be set per kind")
        return v

    @classmethod
    def preset(cls, name: str | None, **overrides) -> "KSCUConfig":
        """As `MethodConfig.preset`; a field given in ``overrides`` also replaces the preset's per-kind values."""
        config = super().preset(name, **overrides)
        if "by_kind" in overrides or not config.by_kind:
            return config
        by_kind = {k: {f: x for f, x in values.items() if f not in overrides} for k, values in config.by_kind.items()}
        return config.model_copy(update={"by_kind": {k: x for k, x in by_kind.items() if x}})

    def for_kind(self, kind: str) -> "KSCUConfig":
        """This config with ``by_kind[kind]`` applied (and ``by_kind`` emptied): what a concept of ``kind`` runs."""
        if not self.by_kind:
            return self
        return type(self)(**{**self.model_dump(), **self.by_kind.get(kind, {}), "by_kind": {}})

    def resolved(self, kind: str) -> tuple[int, int]:
        """(iterations, start step) for a concept kind."""
        iterations = self.iterations if self.iterations is not None else self.iterations_by_kind[kind]
        start = self.start_step if self.start_step is not None else round(KIND_DEFAULTS[kind][1] * self.n_steps / 50)
        return iterations, start


def augment_prompt(concept: ConceptSpec, target: str, template: str, g: torch.Generator) -> str:
    """One random rewording of ``template`` filled with ``target`` (the concept words are kept)."""
    op = ("template", "shuffle", "delete", "affix")[randint(4, g)]
    if op == "template" and len(concept.templates) > 1:
        others = [t for t in concept.templates if t != template]
        return concept.fill(others[randint(len(others), g)], target)
    prompt = concept.fill(template, target)
    words = prompt.split()
    if op == "shuffle" and len(words) > 1:
        return " ".join(words[i] for i in torch.randperm(len(words), generator=g).tolist())
    keep = set(target.lower().split())
    removable = [i for i, w in enumerate(words) if w.lower().strip(",.") not in keep]
    if op == "delete" and removable:
        drop = removable[randint(len(removable), g)]
        return " ".join(w for i, w in enumerate(words) if i != drop)
    if randint(2, g):
        return f"{PREFIXES[randint(len(PREFIXES), g)]} {prompt}"
    return f"{prompt}, {SUFFIXES[randint(len(SUFFIXES), g)]}"


def release_augmentations(target: str, kind: str, g: torch.Generator, n: int = 10, max_noise: int = 3) -> list[str]:
    """The authors' code's rewordings of ``target``: variant i fills template i mod 10 of the kind's
    category, then (i mod 4) shuffles its words, deletes one non-concept word (every occurrence), or
    adds a random 1..``max_noise`` character alphanumeric prefix or suffix."""
    templates = RELEASE_TEMPLATES[RELEASE_CATEGORY[kind]]
    keep = {w.strip(string.punctuation).lower() for w in target.split()}
    out = []
    for i in range(n):
        words = templates[i % len(templates)].format(target).split()
        op = i % 4
        if op == 0 and len(words) > 1:
            words = [words[j] for j in torch.randperm(len(words), generator=g).tolist()]
        elif op == 1:
            removable = [w for w in words if w.strip(string.punctuation).lower() not in keep]
            if removable:
                gone = removable[randint(len(removable), g)]
                words = [w for w in words if w != gone]
        elif op >= 2:
            noise = "".join(ALPHANUMERIC[randint(len(ALPHANUMERIC), g)] for _ in range(1 + randint(max_noise, g)))
            words = [noise] + words if op == 2 else words + [noise]
        out.append(" ".join(words))
    return out


class KSCUStep:
    """One KSCU iteration; keeps the running trajectory (checkpointed via state_dict)."""

    def __init__(self, pipe, trainer: Trainer, concept: ConceptSpec, config: KSCUConfig, iterations: int,
                 schedule: list[int]):
        self.pipe, self.unet, self.trainer, self.concept, self.config = pipe, pipe.unet, trainer, concept, config
        self.schedule = schedule
        if config.prompts == "bare":
            self.pairs = [(concept.canonical, "{}")]
        else:
            self.pairs = [(t, tpl) for t in concept.targets for tpl in concept.templates]
        self.rewordings: dict[str, list[str]] = {}
        if config.augment == "release":
            g = step_generator(config.seed, -7)
            self.rewordings = {t: release_augmentations(t, concept.kind, g) for t in dict.fromkeys(t for t, _ in self.pairs)}
        self.embeds = encode_conditions(pipe, [concept.fill(tpl, t) for t, tpl in self.pairs])
        self.uncond = encode_conditions(pipe, [""])
        self.sampler = DDIMSampler(pipe.scheduler, config.n_steps)
        self.retain = RetainTerm.from_config(pipe, trainer, concept, config)
        self.retain_kv = KVRetainTerm.from_config(pipe, trainer, concept, config)
        self.augment_from = iterations - math.ceil(config.augment_fraction * iterations)
        self.z: torch.Tensor | None = None
        self.s = -1
        self.prompt = 0

    # ------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.z is None:
            return {}
        return {"z": self.z, "s": torch.tensor(self.s), "prompt": torch.tensor(self.prompt)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.z = state["z"] if "z" in state else None
        self.s = int(state["s"]) if "s" in state else -1
        self.prompt = int(state["prompt"]) if "prompt" in state else 0

    # ------------------------------------------------------------ one iteration
    def latent(self, s: int, g: torch.Generator) -> torch.Tensor:
        """The latent at step s: continue the running trajectory, or start a new one on wrap-around."""
        cfg = self.config
        if self.z is None or s <= self.s:
            self.prompt = randint(len(self.pairs), g)
            z, start = initial_latents(self.unet, g), 0
        else:
            z, start = self.z, self.s
        cond = self.embeds[self.prompt : self.prompt + 1]
        self.z = self.sampler.denoise(self.unet, z, start, s, cond, self.uncond, cfg.guidance)
        self.s = s
        return self.z

    def conditioning(self, step: int, g: torch.Generator) -> TextCondition:
        """c~: the prompt's embedding, or an augmented prompt's (plus embedding noise) near the end.

        The noise goes on the hidden states the cross-attention reads; SDXL's
        pooled embedding and time ids are those of the augmented prompt.
        """
        cond = self.embeds[self.prompt : self.prompt + 1]
        if step < self.augment_from:
            return cond
        target, template = self.pairs[self.prompt]
        if self.rewordings:
            options = self.rewordings[target]
            prompt = options[randint(len(options), g)]
        else:
            prompt = augment_prompt(self.concept, target, template, g)
        emb = encode_conditions(self.pipe, [prompt])
        e = emb.embeds
        return emb.with_embeds(e + self.config.embed_noise * torch.randn(e.shape, generator=g).to(e))

    def __call__(self, step: int, g: torch.Generator) -> torch.Tensor:
        cfg = self.config
        s = self.schedule[step]
        z = self.latent(s, g)
        cond = self.embeds[self.prompt : self.prompt + 1]
        c_tilde = self.conditioning(step, g)
        t = self.sampler.timestep(s)
        with self.trainer.reference():
            eps_c, eps_u = predict(self.unet, torch.cat([z, z]), t, cat_conditions([cond, self.uncond])).chunk(2)
        erase_target, anchor_target = kscu_targets(eps_c, eps_u, t, cfg.negative_guidance, cfg.lambda1_rate)
        out_c, out_u = predict(self.unet, torch.cat([z, z]), t, cat_conditions([c_tilde, self.uncond])).chunk(2)
        loss = F.mse_loss(out_c, erase_target) + cfg.lambda2 * F.mse_loss(out_u, anchor_target)
        if self.retain is not None:
            loss = loss + cfg.preserve_weight * self.retain(g)
        if self.retain_kv is not None:
            loss = loss + cfg.preserve_kv_weight * self.retain_kv()
        return loss


def erase(pipe, concept: ConceptSpec, config: KSCUConfig) -> WeightDelta:
    require_supported_unet(pipe.unet, "kscu")
    config = config.for_kind(concept.kind)
    iterations, start = config.resolved(concept.kind)
    cap = config.cap if config.cap is not None else default_cap(config.n_steps)
    schedule = key_step_schedule(iterations, start, config.n_steps, config.traversals_per_raise, cap)
    scope = config.scope or KIND_SCOPES[concept.kind]
    return fine_tune(pipe, concept, config, "kscu", scope, iterations,
                     lambda trainer: KSCUStep(pipe, trainer, concept, config, iterations, schedule),
                     scope_name=scope)


def _work(spec: MethodSpec, config: KSCUConfig, kind: str) -> MethodWork:
    iterations, start = config.resolved(kind)
    cap = config.cap if config.cap is not None else default_cap(config.n_steps)
    schedule = key_step_schedule(iterations, start, config.n_steps, config.traversals_per_raise, cap)
    steps, prev = 0, None
    for s in schedule:  # running trajectory: +1 step while climbing, from scratch on wrap-around
        steps += (s - prev) if prev is not None and s > prev else s
        prev = s
    return MethodWork(spec.name, spec.scope_for(config, kind), iterations, 2 * steps / max(1, iterations) + 2, 2, 2)


register(MethodSpec("kscu", KSCUConfig, erase, "KSCU: ESD-style fine-tuning at key denoising steps only",
                    family="fine-tune", default_scope=KIND_SCOPES, work=_work,
                    quick={"iterations_by_kind": {"unsafe": 30, "object": 30, "attribute": 30, "style": 20,
                                                  "instance": 8}}))
