"""UCE — Unified Concept Editing (Gandikota et al.): closed-form edit of cross-attention K/V.

Each target word contributes the text-encoder outputs at its token positions
(every position from the first word token up to and including the first
end-of-text), paired position by position with the anchor's outputs; the
anchor positions pass through the ORIGINAL weights to give the target values.
Preserved prompts (the concept's ``preserve`` list) contribute their token
embeddings to the preservation term.

SDXL: the UNet's cross-attention reads, at every token, the concatenation of
both text encoders' (penultimate-layer) hidden states, so each row here is
that concatenated vector (2048-d on SDXL), taken at positions located from the
token ids; both tokenizers must put the first end-of-text token at the same
position (`first_eot_positions` checks it and raises otherwise).  SDXL is ALSO
conditioned by the second encoder's pooled embedding, which enters through the
time embedding (``text_embeds``), not through cross-attention: a K/V edit cannot
change it.  This is a deliberate choice, kept so the edit stays the paper's
closed form on cross-attention only: the concept's pooled embedding still
reaches the UNet, as a global signal in every block, so the edit may leave
more of the concept on SDXL than on SD-1.x/2.x (not measured: only tiny random
SDXL pipelines exist offline here).  A fine-tuning stage sees the pooled
embedding (``trce`` = stage 1 + stage 2) when that matters.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..concepts.spec import ConceptSpec
from ..models.delta import WeightDelta
from ..models.text import encode_prompts, first_eot_positions
from .base import EditSession, MethodConfig, MethodInfo
from .closed_form import cross_attention_kv_names, edit_cross_attention_kv, second_moment


class Config(MethodConfig):
    """Stable Diffusion defaults: preservation weight 1 on the concept's own preserve list, lam 0.1."""

    eta: float = 1.0
    lam: float = 0.1
    max_preserve: int = 200
    # "tokens": positions 1..first [EoT]; "tokens+padding": also every padding position
    # after it, position by position (the whole padded sequence).  On the Shapes model
    # neither erases a shape (circle 0.92 -> 0.92 / 0.83 at step 11000 of its training):
    # UCE's source rows are the bare target words, whose padding outputs differ from
    # those of full captions, which is where that text encoder puts the shape.
    positions: Literal["tokens", "tokens+padding"] = "tokens"



def paired_token_rows(pipe, sources: list[str], anchors: list[str], padding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Position-aligned rows 1..max(first EoT) of each source/anchor pair (``padding``: 1..end)."""
    emb_s, emb_a = encode_prompts(pipe, sources), encode_prompts(pipe, anchors)
    end_s, end_a = first_eot_positions(pipe, sources), first_eot_positions(pipe, anchors)
    rows_s, rows_a = [], []
    for i in range(len(sources)):
        last = emb_s.shape[1] - 1 if padding else int(max(end_s[i], end_a[i]))
        rows_s.append(emb_s[i, 1 : last + 1])
        rows_a.append(emb_a[i, 1 : last + 1])
    return torch.cat(rows_s), torch.cat(rows_a)


def erase(pipe, concept: ConceptSpec, config: Config) -> WeightDelta:
    sources = list(concept.targets)
    anchors = [concept.anchor_for(t) for t in sources]
    padding = config.positions == "tokens+padding"
    src, anc = paired_token_rows(pipe, sources, anchors, padding)
    preserve = concept.preserve[: config.max_preserve]
    moment = None
    if preserve:
        emb = encode_prompts(pipe, preserve)
        ends = first_eot_positions(pipe, preserve)
        stop = [emb.shape[1] if padding else int(e) + 1 for e in ends]
        moment = second_moment(torch.cat([emb[i, 1:s] for i, s in enumerate(stop)]))
    with EditSession(pipe, cross_attention_kv_names(pipe.unet), "uce", config, concept) as session:
        edit_cross_attention_kv(pipe.unet, src, anc, moment, config.eta, config.lam)
        session.metrics.update(source_rows=int(src.shape[0]), preserve_prompts=len(preserve))
    return session.delta


METHODS = {"uce": MethodInfo("uce", Config, erase, "closed-form K/V edit on the concept's token embeddings")}
