"""Projection hardening: make the cross-attention keys and values blind to the concept's directions.

`harden_proj(pipe, delta, concept, config)` takes any erasure delta and returns one composed delta
whose every cross-attention key and value projection has the concept's text directions in its null
space.  With ``x`` a text-encoder row, ``W'_l`` the erased projections and ``P = I - U U^T``:

1. **Directions.** ``U`` (D x k, orthonormal) spans the top ``rank`` generalised eigenvectors of

       S_c u = mu (S_p + eps tr(S_p)/D I) u

   where ``S_c`` is the mean second moment of the concept's rows (``source: difference``: each
   concept row minus its anchor's row at the same position; ``rows``: the concept rows themselves)
   and ``S_p`` that of the preserved prompts' rows: the directions in which the concept's rows
   carry energy that the preserved prompts do not.
2. **Edit.** ``W_l <- N_l P`` with ``N_l`` the least-squares refit that makes the blinded projection
   give what ``W'_l`` gave on the held rows (preserved, concept and anchor rows; second moment
   ``C``), with a ridge ``lamb`` toward ``W'_l``::

       N_l = (lamb W'_l + W'_l C P) (lamb I + P C P)^-1

Every ``W_l`` then maps any embedding's component along ``U`` to zero, in every layer at once, so no
prompt or soft embedding can reach the concept through those directions: unlike a closed-form edit
``W_l M`` with invertible ``M`` (UCE, RECE), which the embedding ``M^-1 c`` undoes exactly.  What
the projection cannot block is the concept carried in other directions; ``rounds`` > 1 adds, each
round, the directions of RECE's closed-form adversarial embeddings (`adversarial_embedding`)
relative to the concept rows, on the current weights, before the eigenproblem is solved again.

erasekit's own variant (no paper); `metrics.rounds` records, per round, the share of the concept
rows' energy in the blinded directions, and RECE's reproduction error of the round's adversarial rows
(`reproduction_error`) and the same error in units of the concept-to-anchor gap (`restoration_gap`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from ...concepts.spec import ConceptSpec
from ...models.delta import WeightDelta
from ...models.text import encode_prompts
from ...training.config import MethodConfig
from ..closed_form import second_moment
from .common import composed_delta, copy_in, kv_projections, kv_snapshot, load_base, preserved_prompts
from .rece import adversarial_embedding, reproduction_error


class ProjConfig(MethodConfig):
    """Projection hardening (erasekit's): the concept's text directions put in the K/V null space."""

    rank: int = Field(4, ge=1, description="Directions blinded per round.")
    rounds: int = Field(1, ge=1, description="Rounds; each after the first adds the directions of the "
                        "closed-form adversarial embeddings on the current weights.")
    source: Literal["difference", "rows"] = Field("difference", description="Concept energy: each concept row "
                                                  "minus its anchor's row, or the concept rows themselves.")
    preserve_ridge: float = Field(100.0, ge=0, description="eps: ridge of the preserved moment, relative to its "
                                  "mean eigenvalue.")
    lamb: float = Field(1e-2, gt=0, description="Ridge of the refit toward the current weights, relative to the "
                        "held moment's mean eigenvalue.")
    refit: bool = Field(True, description="Refit N_l on the held rows; False: W_l <- W'_l P.")
    embedding_reg: float = Field(1e-3, ge=0, description="gamma of the adversarial embeddings of rounds > 1.")
    n_templates: int = Field(0, ge=0, description="Concept prompts: 0 = each target word alone; k = each target "
                             "in the concept's first k templates.")
    preserve: Literal["concept", "concept+general"] = Field("concept+general", description="Preserved prompts: "
                                                            "the concept's preserve list, or that list plus general prompts.")
    n_general: int = Field(400, ge=0, description="General prompts among the preserved ones.")
    max_preserve: int = Field(200, ge=1, description="At most this many of the concept's own preserved prompts.")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # Shapes captions carry their meaning in the padding rows of templated prompts (as for rece).
        "shapes": {"n_templates": 8},
    }


def concept_directions(concept_moment: torch.Tensor, preserve_moment: torch.Tensor, rank: int,
                       ridge: float) -> torch.Tensor:
    """(D, rank) orthonormal basis of the top generalised eigenvectors of (concept, preserved + ridge)."""
    d = concept_moment.shape[0]
    p = preserve_moment.double() + ridge * float(torch.trace(preserve_moment)) / d * torch.eye(d, dtype=torch.float64)
    chol = torch.linalg.cholesky(p)
    inv = torch.linalg.inv(chol)
    sym = inv @ concept_moment.double() @ inv.T
    sym = (sym + sym.T) / 2
    _, vectors = torch.linalg.eigh(sym)  # ascending
    top = inv.T @ vectors[:, -rank:]
    basis, _ = torch.linalg.qr(top)
    return basis


def blind(weight: torch.Tensor, basis: torch.Tensor, held_moment: torch.Tensor | None, lamb: float) -> torch.Tensor:
    """``N P`` with ``P = I - basis basis^T`` and ``N`` the ridge refit of ``weight`` on ``held_moment`` (None: N = W)."""
    w = weight.detach().double().cpu()
    d = w.shape[1]
    proj = torch.eye(d, dtype=torch.float64) - basis @ basis.T
    if held_moment is None:
        return (w @ proj).to(weight.dtype)
    c = held_moment.double()
    lam = lamb * float(torch.trace(c)) / d
    n = torch.linalg.solve((lam * torch.eye(d, dtype=torch.float64) + proj @ c @ proj).T,
                           (lam * w + w @ c @ proj).T).T
    return (n @ proj).to(weight.dtype)


def restoration_gap(current: list[torch.Tensor], base: list[torch.Tensor], adversarial: torch.Tensor,
                    concept: torch.Tensor, anchor: torch.Tensor) -> float:
    """sum_l ||current_l e_r - base_l c_r||^2 / sum_l ||base_l c_r - base_l a_r||^2 over rows r: how far the
    adversarial rows stay from the concept's base keys and values, in units of the concept-to-anchor gap
    (0: the concept is fully back; 1: as far as the anchor is)."""
    err = gap = 0.0
    e, c, a = adversarial.double().cpu(), concept.double().cpu(), anchor.double().cpu()
    for w_new, w_old in zip(current, base):
        w, b = w_new.detach().double().cpu(), w_old.detach().double().cpu()
        err += float(((e @ w.T) - (c @ b.T)).pow(2).sum())
        gap += float(((c - a) @ b.T).pow(2).sum())
    return err / max(gap, 1e-30)


def _rows(pipe, prompts: list[str], width: int) -> torch.Tensor:
    return encode_prompts(pipe, prompts).reshape(-1, width).double().cpu()


def harden_proj(pipe, delta: WeightDelta | None, concept: ConceptSpec, config: ProjConfig) -> WeightDelta:
    """The composed delta of ``delta`` (None: the base model) then projection hardening of ``concept``.

    ``pipe`` must hold the base model (``delta`` not applied); it is left as it was found.
    """
    t0 = time.perf_counter()
    originals, base_kv = kv_snapshot(pipe, delta)
    width = base_kv[0].shape[1]
    sources, anchors = concept.prompt_pairs(config.n_templates)
    concept_rows = _rows(pipe, sources, width)
    base_anchor_rows = _rows(pipe, anchors, width)
    preserve = preserved_prompts(pipe, concept, config)
    load_base(pipe, delta)
    rounds = []
    try:
        # held rows are those of the encoder the hardened model reads (the delta's, if it changed it)
        changed_text = delta is not None and any(n.startswith("text_encoder.") for n in delta.names)
        anchor_rows = _rows(pipe, anchors, width) if changed_text else base_anchor_rows
        preserve_rows = _rows(pipe, preserve, width)
        energy = concept_rows - base_anchor_rows if config.source == "difference" else concept_rows
        concept_moment = second_moment(energy)
        preserve_moment = second_moment(preserve_rows)
        held = second_moment(torch.cat([preserve_rows, concept_rows, anchor_rows])) if config.refit else None
        projections = kv_projections(pipe.unet)
        erased = [p.weight.detach().clone() for p in projections]
        adv = None
        for r in range(config.rounds):
            if adv is not None:  # the previous round's adversarial embeddings, on the weights it left
                concept_moment = concept_moment + second_moment(adv - concept_rows)
            basis = concept_directions(concept_moment, preserve_moment, config.rank * (r + 1), config.preserve_ridge)
            with torch.no_grad():
                for proj, w in zip(projections, erased):
                    proj.weight.copy_(blind(w, basis, held, config.lamb))
            current = [p.weight for p in projections]
            adv = adversarial_embedding(current, base_kv, concept_rows, config.embedding_reg)
            share = float((energy @ basis).pow(2).sum() / energy.pow(2).sum().clamp_min(1e-30))
            rounds.append({"blinded": int(basis.shape[1]), "concept_energy_blinded": share,
                           "reproduction_error": reproduction_error(current, base_kv, adv, concept_rows),
                           "restoration_gap": restoration_gap(current, base_kv, adv, concept_rows,
                                                              base_anchor_rows)})
        metrics = {"rounds": rounds, "source_rows": int(concept_rows.shape[0]), "preserve_prompts": len(preserve)}
        result = composed_delta(pipe, originals, delta, "proj", concept, config, metrics, t0)
    finally:
        copy_in(pipe, originals)
    return result
