"""TRCE stage 1 ("trce-t"): textual semantic erasure, a closed-form K/V edit on [EoT] embeddings.

Every prompt contributes ONE embedding: the text-encoder output at its first
end-of-text token.  Sources are each target synonym in each template (20 x 15
by default, fewer when the concept has fewer); their targets are the anchor in
the same template through the original weights; preservation is the
second moment of the [EoT] embeddings of general prompts (COCO for Stable
Diffusion, random captions for the Shapes world) plus the concept's own
preserve list, optionally cached.  The solve is the paper's Eq. 5 with sums
normalised to means (`erasekit.methods.closed_form`) and no ridge term.

Options that reproduce the authors' release (ddgoodgood/TRCE) one setting away:

- ``eot="word-count"``: the release finds the [EoT] as word count + 1, which
  lands on a word token whenever a word splits into several tokens;
- ``eta_applied="twice"``: the release multiplies its preservation statistics by
  the preservation scale twice, an effective eta of 1e-4 instead of 0.01.

``lam`` (a ridge term lam * (W, I), not in the paper nor the release) is kept for
the Shapes preset.  ``context_prefixes`` k (extension, off by default) adds k copies of
every source prompt with ``context_words`` words in front, drawn (seeded) from the words
of the general prompts less the concept's and the anchor's, each paired with its anchor
prompt behind the same words: the edit then also maps the concept's [EoT] rows after
other words.  See docs/faithfulness.md for every difference.

SDXL: see `erasekit.methods.closed_form` (concatenated rows of both encoders;
the pooled embedding is left unedited).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from ...concepts.general import general_prompts
from ...concepts.spec import ConceptSpec
from ...models.delta import WeightDelta
from ...models.vocabulary import words_of
from ...training import EditSession, MethodConfig, step_generator
from ..base import MethodSpec, MethodWork, register
from ..closed_form import cross_attention_kv_names, edit_cross_attention_kv
from ..preservation import paired_eot_rows, preservation_moment


class TRCETextualConfig(MethodConfig):
    """Paper defaults (SD-1.4): 20 synonyms x 15 templates, eta 0.01, no ridge, COCO statistics.

    The ``shapes`` preset edits every [EoT]/padding output (the Shapes text encoder, trained
    from scratch, spreads a prompt over all of them), uses 400 general captions and eta 10
    (its 128-d text space makes the concept's rows overlap the preserved ones), with the
    ridge 0.1 it was measured with: docs/experiments/trce.md.
    """

    n_synonyms: int = 20
    n_templates: int = 15
    eta: float = 0.01
    lam: float = 0.0
    n_general: int = 1000
    preserve_cache: str | None = None
    # "first": each prompt contributes its first [EoT] output only (the paper).  "all": also
    # every padding position after it (all [EoT] ids on SD-1.x), paired position by position.
    eot_rows: Literal["first", "all"] = "first"
    # How the first [EoT] is found: from the token ids (the paper's [EoT]) or as word count + 1 (the release).
    eot: Literal["token-id", "word-count"] = "token-id"
    # "twice": eta multiplies the preservation statistics twice (eta^2), as the release does.
    eta_applied: Literal["once", "twice"] = "once"
    context_prefixes: int = Field(0, ge=0, description="extension: copies of each source prompt with context_words "
                                  "random words of the general prompts in front, paired with the anchor prompt "
                                  "behind the same words")
    context_words: int = Field(3, ge=1, description="words in front of each context copy")

    # The release's behaviours and the extensions, off by default: left out of the fingerprint there.
    EXTENSIONS: ClassVar[tuple[str, ...]] = ("eot", "eta_applied", "context_prefixes", "context_words")
    PRESETS: ClassVar[dict] = {
        "shapes": {"n_general": 400, "eot_rows": "all", "eta": 10.0, "lam": 0.1},
    }

    def effective_eta(self) -> float:
        return self.eta * self.eta if self.eta_applied == "twice" else self.eta


CONTEXT_SALT = -4  # the context words' generator: independent of every other draw of a run


def with_context(sources: list[str], anchors: list[str], words: list[str], copies: int, n_words: int,
                 seed: int) -> tuple[list[str], list[str]]:
    """``sources`` and ``anchors``, then ``copies`` of each pair with the same ``n_words`` of ``words`` in front."""
    g = step_generator(seed, CONTEXT_SALT)
    picks = torch.randint(len(words), (len(sources), copies, n_words), generator=g).tolist()
    front = [" ".join(words[i] for i in pick) for per_source in picks for pick in per_source]
    pairs = [(s, a) for s, a in zip(sources, anchors) for _ in range(copies)]
    return (sources + [f"{f} {s}" for f, (s, _) in zip(front, pairs)],
            anchors + [f"{f} {a}" for f, (_, a) in zip(front, pairs)])


def erase_textual(pipe, concept: ConceptSpec, config: TRCETextualConfig, method: str = "trce-t") -> WeightDelta:
    sources = concept.target_prompts(config.n_synonyms, config.n_templates)
    anchors = concept.anchor_prompts(config.n_synonyms, config.n_templates)
    general = general_prompts(pipe, config.n_general, exclude_words=list(concept.targets))
    if config.context_prefixes:
        words = sorted(words_of(general) - words_of(concept.targets) - words_of([concept.anchor]))
        if not words:
            raise ValueError("context_prefixes draws its words from the general prompts; with n_general=0 "
                             "there are none (set n_general > 0 or context_prefixes=0)")
        sources, anchors = with_context(sources, anchors, words, config.context_prefixes, config.context_words,
                                        config.seed)
    padding = config.eot_rows == "all"
    src, anc = paired_eot_rows(pipe, sources, anchors, padding, config.eot)
    preserve = general + list(concept.preserve)
    moment = preservation_moment(pipe, preserve, "eot+padding" if padding else "eot", cache=config.preserve_cache,
                                 eot=config.eot)
    with EditSession(pipe, cross_attention_kv_names(pipe.unet), method, config, concept) as session:
        edit_cross_attention_kv(pipe.unet, src, anc, moment, config.effective_eta(), config.lam)
        session.metrics.update(source_prompts=len(sources), preserve_prompts=len(preserve))
    return session.delta


def _work(spec: MethodSpec, config: TRCETextualConfig, kind: str) -> MethodWork:
    return MethodWork(spec.name, spec.scope_for(config, kind), 0, 0, 0, 0, closed_form=True,
                      notes="closed form: text encoding + one linear solve per K/V projection")


register(MethodSpec("trce-t", TRCETextualConfig, erase_textual,
                    "TRCE stage 1: closed-form K/V edit on first-[EoT] embeddings",
                    family="closed-form", default_scope="cross_attn_kv", work=_work))
