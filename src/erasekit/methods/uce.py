"""UCE — Unified Concept Editing (Gandikota et al.): closed-form edit of cross-attention K/V.

Each target word contributes the text-encoder outputs at its token positions
(every position from the first word token up to and including the first
end-of-text), paired position by position with the anchor's outputs; the
anchor positions pass through the ORIGINAL weights to give the target values.
Preserved prompts (the concept's ``preserve`` list) contribute their token
embeddings to the preservation term.
"""

from __future__ import annotations

import torch

from ..concepts.spec import ConceptSpec
from ..models.delta import WeightDelta
from ..models.text import encode_prompts, first_eot_index, token_ids
from .base import EditSession, MethodConfig, MethodInfo
from .closed_form import cross_attention_kv_names, edit_cross_attention_kv, second_moment


class Config(MethodConfig):
    """Stable Diffusion defaults: preservation weight 1 on the concept's own preserve list, lam 0.1."""

    eta: float = 1.0
    lam: float = 0.1
    max_preserve: int = 200


def paired_token_rows(pipe, sources: list[str], anchors: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Position-aligned rows 1..max(first EoT) of each source/anchor pair."""
    emb_s, emb_a = encode_prompts(pipe, sources), encode_prompts(pipe, anchors)
    eos = pipe.tokenizer.eos_token_id
    end_s = first_eot_index(token_ids(pipe, sources), eos)
    end_a = first_eot_index(token_ids(pipe, anchors), eos)
    rows_s, rows_a = [], []
    for i in range(len(sources)):
        last = int(max(end_s[i], end_a[i]))
        rows_s.append(emb_s[i, 1 : last + 1])
        rows_a.append(emb_a[i, 1 : last + 1])
    return torch.cat(rows_s), torch.cat(rows_a)


def erase(pipe, concept: ConceptSpec, config: Config) -> WeightDelta:
    sources = list(concept.targets)
    anchors = [concept.anchor_for(t) for t in sources]
    src, anc = paired_token_rows(pipe, sources, anchors)
    preserve = concept.preserve[: config.max_preserve]
    moment = None
    if preserve:
        emb = encode_prompts(pipe, preserve)
        ends = first_eot_index(token_ids(pipe, preserve), pipe.tokenizer.eos_token_id)
        moment = second_moment(torch.cat([emb[i, 1 : int(e) + 1] for i, e in enumerate(ends)]))
    with EditSession(pipe, cross_attention_kv_names(pipe.unet), "uce", config, concept) as session:
        edit_cross_attention_kv(pipe.unet, src, anc, moment, config.eta, config.lam)
        session.metrics.update(source_rows=int(src.shape[0]), preserve_prompts=len(preserve))
    return session.delta


METHODS = {"uce": MethodInfo("uce", Config, erase, "closed-form K/V edit on the concept's token embeddings")}
