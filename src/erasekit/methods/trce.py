"""TRCE — Textual semantic erasure + denoising trajectory steering (seed 001). Stage 1 here.

Stage 1 ("trce-t") is the closed-form K/V edit in which every prompt
contributes exactly ONE embedding: the text-encoder output at its FIRST
end-of-text token, located from the token ids.  Sources are each target
synonym in each template (20 x 15 by default, fewer when the concept has
fewer); targets are the anchor in the same template through the original
weights; preservation is the normalised second moment of the [EoT]
embeddings of general prompts (COCO for Stable Diffusion, random captions
for the Shapes world) plus the concept's own preserve list, optionally cached.

SDXL: see `erasekit.methods.closed_form` (concatenated rows of both encoders;
the pooled embedding is left unedited).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from ..concepts.general import general_prompts
from ..concepts.spec import ConceptSpec
from ..models.delta import WeightDelta
from ..training import EditSession, MethodConfig
from .base import MethodSpec, MethodWork, register
from .closed_form import cross_attention_kv_names, edit_cross_attention_kv
from .preservation import paired_eot_rows, preservation_moment


class TextualConfig(MethodConfig):
    """Paper defaults (SD-1.4): 20 synonyms x 15 templates, eta 0.01, COCO statistics."""

    n_synonyms: int = 20
    n_templates: int = 15
    eta: float = 0.01
    lam: float = 0.1
    n_general: int = 1000
    preserve_cache: str | None = None
    # "first": each prompt contributes its first [EoT] output only (the paper).  "all": also
    # every padding position after it (all [EoT] ids on SD-1.x), paired position by position.
    eot_rows: Literal["first", "all"] = "first"

    PRESETS: ClassVar[dict] = {
        # The Shapes world has a 128-d text space and far fewer distinct prompts
        # than COCO, so 400 general captions already span it.  Its text encoder was
        # trained from scratch with the UNet (no CLIP pre-training that concentrates a
        # prompt's meaning in the first [EoT], CLIP's pooled output): it spreads the
        # prompt over all padding [EoT] positions, which the UNet reads, so an edit of
        # the first [EoT] alone leaves shapes intact there (measured: circle rate
        # 0.92 -> 0.92).  Its preset edits every [EoT]/padding output instead.  eta is
        # 10, not 0.01: 128 dimensions hold all of the world's captions, so the concept's
        # rows overlap the preserved ones far more than in CLIP's 768, and the
        # preservation term must weigh more.  Measured with the pack's counterpart anchors
        # (circle -> square; 32 prompts per tier, 96 preservation prompts): eta 3 gives
        # circle 0.88 -> 0.00 at other-shape adherence 0.95 of the original's, 10 -> 0.00 at
        # 0.95 (colour 0.99), 30 -> 0.03 at 0.97; red 1.00 -> 0.00 at 1.00 with eta 10.
        # With the neutral anchor "shape" the rate cannot go under chance (~1/6).
        "shapes": {"n_general": 400, "eot_rows": "all", "eta": 10.0},
    }


def erase_textual(pipe, concept: ConceptSpec, config: TextualConfig, method: str = "trce-t") -> WeightDelta:
    sources = concept.target_prompts(config.n_synonyms, config.n_templates)
    anchors = concept.anchor_prompts(config.n_synonyms, config.n_templates)
    padding = config.eot_rows == "all"
    src, anc = paired_eot_rows(pipe, sources, anchors, padding)
    general = general_prompts(pipe, config.n_general, exclude_words=list(concept.targets))
    preserve = general + list(concept.preserve)
    moment = preservation_moment(pipe, preserve, "eot+padding" if padding else "eot", cache=config.preserve_cache)
    with EditSession(pipe, cross_attention_kv_names(pipe.unet), method, config, concept) as session:
        edit_cross_attention_kv(pipe.unet, src, anc, moment, config.eta, config.lam)
        session.metrics.update(source_prompts=len(sources), preserve_prompts=len(preserve))
    return session.delta


def _work(spec: MethodSpec, config: TextualConfig, kind: str) -> MethodWork:
    return MethodWork(spec.name, spec.scope_for(config, kind), 0, 0, 0, 0, closed_form=True,
                      notes="closed form: text encoding + one linear solve per K/V projection")


register(MethodSpec("trce-t", TextualConfig, erase_textual,
                    "TRCE stage 1: closed-form K/V edit on first-[EoT] embeddings",
                    family="closed-form", default_scope="cross_attn_kv", work=_work))
