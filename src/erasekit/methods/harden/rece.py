"""Attack hardening: make an erasure hold against embeddings that bring the concept back.

`harden_rece(pipe, delta, concept, config)` takes ANY erasure delta and returns one composed delta
(relative to the base model) whose manifest records the chain ``<method> -> harden:rece``.

The ``rece`` variant follows RECE (Gong et al., ECCV 2024).  With ``W_l`` the base model's
cross-attention key/value projections and ``W'_l`` the current (erased) ones, every epoch

1. derives, in closed form, the embedding that makes the erased model reproduce what the
   base model computed for the concept's prompt ``c`` (every token row r)::

       e*_r = argmin_e  sum_l ||W'_l e - W_l c_r||^2 + gamma ||e||^2
            = (sum_l W'_l^T W'_l + gamma I)^-1 (sum_l W'_l^T W_l) c_r

2. re-applies the closed-form cross-attention edit with ``e*`` as the source rows, each mapped
   to what the current weights give for the anchor's row r (RECE's "replace" target), with the
   preserved prompts' rows held (weight ``preserve_scale``) and a ridge ``lamb`` toward the
   current weights, all as sums over rows (the release's normalisation)::

       W_l <- (lamb W_l + s_e sum_r W_l a_r e*_r^T + s_p sum_j W_l p_j p_j^T)
              (lamb I  + s_e sum_r e*_r e*_r^T   + s_p sum_j p_j p_j^T)^-1

When the delta changes the text encoder (an ``adv``-hardened delta), the anchor and preserved rows
are encoded by the delta's text encoder, the one the hardened model reads; the concept rows ``c``
stay the base encoder's, since step 1 reproduces what the base model computed.

Methods that never touch the K/V (ESD-u, TRCE-V) start from ``W' = W``: step 1 then returns
the concept's own embedding and the first epoch is a K/V edit of the concept on top of them.

Extension (``attack_rounds`` > 0; 0 is RECE): before each epoch's edit, the ``adv`` variant's
soft-prompt attack (settings ``attack``) runs ``attack_rounds`` times on the current model, each
on one concept prompt ``c``; every attacked prompt's text-encoder rows ``text([adv] + c)`` join the
source rows of step 2 as they are (no closed-form step), mapped to what the current weights give
for the same soft tokens prepended to the prompt's anchor, ``text([adv] + a)``.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from ...concepts.spec import ConceptSpec
from ...models.delta import WeightDelta
from ...models.conditioning import encode_conditions
from ...models.text import encode_prompts, token_ids
from ...training.config import MethodConfig
from ..closed_form import closed_form_edit, second_moment
from .adv import AdvConfig, AdvStep
from .common import composed_delta, copy_in, kv_projections, kv_snapshot, load_base, preserved_prompts


# the adv variant's Shapes attack (the ``attack`` of its shapes preset), for ``attack_rounds``
SHAPES_ATTACK = {k: v for k, v in AdvConfig.PRESETS["shapes"].items() if k.startswith("attack") or k in ("n_steps",)}


class RECEConfig(MethodConfig):
    """RECE hardening; defaults are the paper's settings for objects and styles (the release's table)."""

    epochs: int = Field(1, ge=1, description="Rounds of (adversarial embedding, edit). Release: 1 for objects "
                        "and styles, 2 for I2P categories, 3 for nudity (see `by_concept`).")
    embedding_reg: float = Field(1e-3, ge=0, description="gamma: ridge of the adversarial embedding (release: "
                                 "1e-3 objects/styles, 0.1 nudity/unsafe).")
    erase_scale: float = Field(1.0, gt=0, description="s_e: weight of the adversarial rows (release default 1).")
    preserve_scale: float = Field(0.1, ge=0, description="s_p: weight of the preserved rows (paper lambda_1 = 0.1).")
    lamb: float = Field(0.1, gt=0, description="Ridge toward the current weights (paper lambda_2 = 0.1).")
    anchor: Literal["empty", "concept"] = Field("empty", description="Rows the adversarial embedding is mapped "
                                                "to: the empty prompt (release default) or the concept's anchor.")
    preserve: Literal["empty", "concept", "concept+general"] = Field(
        "empty", description="Preserved prompts: the empty prompt (release default), the concept's preserve list, "
        "or that list plus `n_general` general prompts (COCO on SD, random captions on Shapes).")
    n_general: int = Field(400, ge=0, description="General prompts preserved with preserve='concept+general'.")
    n_templates: int = Field(0, ge=0, description="Concept prompts: 0 = each target word alone (release); "
                             "k = each target in the concept's first k templates.")
    max_preserve: int = Field(200, ge=1, description="At most this many preserved prompts.")
    attack_rounds: int = Field(0, ge=0, description="Extension (0: RECE): soft-prompt attacks per epoch whose "
                               "attacked prompts are edited away with the closed-form adversarial embeddings.")
    attack: dict[str, Any] = Field(default_factory=dict, description="AdvConfig settings of that attack "
                                   "(attack_steps, attack_lr, attack_tokens, ...); empty: AdvConfig's defaults.")
    by_concept: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"unsafe": {"epochs": 2, "embedding_reg": 0.1},
                                 "nudity": {"epochs": 3, "embedding_reg": 0.1}},
        description="Overrides per concept kind, then per concept name (the release's table).")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # The Shapes model has no useful empty-prompt target (an empty prompt draws a random shape
        # of a random colour) and its captions carry meaning in the padding rows of templated
        # prompts, so the concept's own anchor, preserve list and templates are used.
        # Its 128-d text space holds every caption, so the colours (absent from a shape's preserve
        # list) are held by general captions too.
        "shapes": {"anchor": "concept", "preserve": "concept+general", "n_templates": 8, "epochs": 3,
                   "preserve_scale": 1.0, "attack": SHAPES_ATTACK},
    }

    def for_concept(self, concept: ConceptSpec) -> "RECEConfig":
        """The config with the overrides of ``concept``'s kind, then of its name."""
        values = {**self.by_concept.get(concept.kind, {}), **self.by_concept.get(concept.name.split("/")[-1], {})}
        return self.model_copy(update=values) if values else self


def adversarial_embedding(current: list[torch.Tensor], base: list[torch.Tensor], rows: torch.Tensor,
                          gamma: float) -> torch.Tensor:
    """Rows e* minimising sum_l ||current_l e - base_l c||^2 + gamma ||e||^2 for each row c of ``rows``."""
    d = rows.shape[-1]
    gram = gamma * torch.eye(d, dtype=torch.float64)
    cross = torch.zeros(d, d, dtype=torch.float64)
    for w_new, w_old in zip(current, base):
        a, b = w_new.detach().double().cpu(), w_old.detach().double().cpu()
        gram += a.T @ a
        cross += a.T @ b
    coefficient = torch.linalg.solve(gram, cross)  # (D, D)
    return rows.double().cpu() @ coefficient.T


def reproduction_error(current: list[torch.Tensor], base: list[torch.Tensor], adversarial: torch.Tensor,
                       concept: torch.Tensor) -> float:
    """sum_l ||current_l e_r - base_l c_r||^2 / sum_l ||base_l c_r||^2 over rows r (0: the concept is fully back)."""
    err = ref = 0.0
    e, c = adversarial.double().cpu(), concept.double().cpu()
    for w_new, w_old in zip(current, base):
        a, b = w_new.detach().double().cpu(), w_old.detach().double().cpu()
        err += float(((e @ a.T) - (c @ b.T)).pow(2).sum())
        ref += float((c @ b.T).pow(2).sum())
    return err / max(ref, 1e-30)


def _prompts(concept: ConceptSpec, config: RECEConfig) -> tuple[list[str], list[str]]:
    sources, anchors = concept.prompt_pairs(config.n_templates)
    if config.anchor == "empty":
        anchors = [""] * len(sources)
    return sources, anchors


class PromptAttack:
    """The adv variant's soft-prompt attack on ``pipe``'s current weights, for RECE's ``attack_rounds``."""

    def __init__(self, pipe, concept: ConceptSpec, sources: list[str], anchors: list[str],
                 base_unet: dict[str, torch.Tensor], config: RECEConfig):
        settings = AdvConfig(**{**config.attack, "seed": config.seed})
        base = {"ids": token_ids(pipe, sources), "cond": encode_conditions(pipe, sources),
                "uncond": encode_conditions(pipe, [""]), "retain_ids": None, "retain_cond": None}
        self.step = AdvStep(pipe, concept, settings, base_unet, base)
        self.anchor_ids = token_ids(pipe, anchors)
        self.generator = torch.Generator().manual_seed(config.seed)

    def rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, anchor) text rows of ``n`` attacked prompts: text([adv] + c) and text([adv] + a)."""
        sources, anchors = [], []
        for _ in range(n):
            self.step.attack(len(self.step.rounds), self.generator)
            i = self.step.adv_prompt
            with torch.no_grad():
                sources.append(self.step.encode(self.step.ids[i:i + 1], self.step.adv)[0])
                anchors.append(self.step.encode(self.anchor_ids[i:i + 1], self.step.adv)[0])
        return torch.cat(sources).double().cpu(), torch.cat(anchors).double().cpu()


@torch.no_grad()
def rece_epoch(pipe, base_kv: list[torch.Tensor], source_rows: torch.Tensor, anchor_rows: torch.Tensor,
               preserve_moment: torch.Tensor | None, n_preserve_rows: int, config: RECEConfig,
               attacked: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """One RECE round on ``pipe``'s cross-attention K/V, in place; returns the round's measurements.

    ``attacked`` (source, anchor) rows are edited as they are, beside the closed-form embeddings."""
    projections = kv_projections(pipe.unet)
    current = [p.weight for p in projections]
    closed = adversarial_embedding(current, base_kv, source_rows, config.embedding_reg)
    before = reproduction_error(current, base_kv, closed, source_rows)
    adv = closed
    if attacked is not None:
        adv, anchor_rows = torch.cat([closed, attacked[0]]), torch.cat([anchor_rows, attacked[1]])
    n = adv.shape[0]
    # closed_form_edit normalises by counts; dividing RECE's sums by s_e * n gives its weights
    eta = config.preserve_scale * n_preserve_rows / (config.erase_scale * n)
    lam = config.lamb / (config.erase_scale * n)
    for proj in projections:
        w = proj.weight
        values = anchor_rows.double() @ w.detach().double().cpu().T
        w.copy_(closed_form_edit(w, adv, values, preserve_moment, eta, lam))
    after = reproduction_error([p.weight for p in projections], base_kv, closed, source_rows)
    return {"reproduction_error_before": before, "reproduction_error_after": after}


def harden_rece(pipe, delta: WeightDelta | None, concept: ConceptSpec, config: RECEConfig) -> WeightDelta:
    """The composed delta of ``delta`` (None: the base model itself) then RECE hardening of ``concept``.

    ``pipe`` must hold the base model (``delta`` not applied); it is left as it was found.
    """
    config = config.for_concept(concept)
    t0 = time.perf_counter()
    originals, base_kv = kv_snapshot(pipe, delta)
    sources, anchors = _prompts(concept, config)
    source_rows = encode_prompts(pipe, sources).reshape(-1, base_kv[0].shape[1]).double().cpu()
    preserve = preserved_prompts(pipe, concept, config)
    load_base(pipe, delta)
    rounds = []
    try:
        # the concept rows above are the base encoder's (what the base model computed); the anchor targets
        # and the held rows are those of the encoder the hardened model reads (the delta's, if it changed it)
        anchor_rows = encode_prompts(pipe, anchors).reshape(-1, base_kv[0].shape[1]).double().cpu()
        moment, n_rows = None, 0
        if preserve:
            rows = encode_prompts(pipe, preserve).reshape(-1, base_kv[0].shape[1])
            moment, n_rows = second_moment(rows), rows.shape[0]
        attack = None
        if config.attack_rounds > 0:
            base_unet = {n[len("unet."):]: t for n, t in originals.items() if n.startswith("unet.")}
            attack = PromptAttack(pipe, concept, sources, anchors, base_unet, config)
        for _ in range(config.epochs):
            attacked = attack.rows(config.attack_rounds) if attack is not None else None
            rounds.append(rece_epoch(pipe, base_kv, source_rows, anchor_rows, moment, n_rows, config, attacked))
        metrics = {"rounds": rounds, "source_rows": int(source_rows.shape[0]), "preserve_prompts": len(preserve)}
        if attack is not None:
            metrics["attack_rounds"] = attack.step.rounds
            metrics["attack_iterations"] = len(attack.step.rounds) * attack.step.config.search_steps
        result = composed_delta(pipe, originals, delta, "rece", concept, config, metrics, t0)
    finally:
        copy_in(pipe, originals)
    return result
