"""UCE — Unified Concept Editing (Gandikota et al.): closed-form edit of cross-attention K/V.

Each target word's text-encoder outputs are mapped to what the ORIGINAL weights
give for its anchor, while the preserved prompts' outputs keep theirs:

    W' = (sum_i v_i c_i^T + eta sum_j W c_j c_j^T + lam W)(sum_i c_i c_i^T + eta sum_j c_j c_j^T + lam I)^-1

``rows`` picks which token rows enter and how they are weighed:

- ``release-2023`` (the SD preset; the code released with the paper): from each
  prompt's last word token to the end of the padded sequence, source and anchor
  paired from their last word tokens on (both cut to the shorter run); plain
  sums; the empty prompt is always preserved (all its rows) besides the concept's
  preserve list (all their rows); ``eta=None`` -> max(0.1, 1 / (1 + #preserve)).
- ``release-2025`` (the 2025 rewrite): the last word token only, for sources,
  anchors and preserved prompts; plain sums; ``eta=None`` -> 1.
- ``erasekit``: positions 1..first [EoT] (``positions="tokens+padding"``: 1..end),
  paired from position 1; sums normalised to means; preservation rows taken the
  same way from the preserve list; ``eta=None`` -> 1.

``lam`` is the releases' regulariser lam (W, I) (0.5 in both releases).
The Shapes preset uses the ``erasekit`` rows over the concept's templates with every
padded position and eta 10 (the Shapes text encoder carries a caption's content in
its padding outputs): docs/experiments/uce.md.  Differences: docs/faithfulness.md.

SDXL: see `erasekit.methods.closed_form` (concatenated rows of both encoders;
the pooled embedding is left unedited).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from ..concepts.spec import ConceptSpec
from ..models.delta import WeightDelta
from ..models.text import encode_prompts, first_eot_positions
from ..training import EditSession, MethodConfig
from .base import MethodSpec, MethodWork, register
from .closed_form import cross_attention_kv_names, edit_cross_attention_kv, second_moment
from .preservation import prompt_rows


class UCEConfig(MethodConfig):
    """Stable Diffusion defaults: the 2023 release's rows and sums, lam 0.5, its preservation scale."""

    rows: Literal["release-2023", "release-2025", "erasekit"] = Field(
        "release-2023", description="which token rows enter the edit and how they are weighed (module docstring)")
    eta: float | None = Field(None, description="preservation scale (None: the rows setting's rule)")
    lam: float = Field(0.5, description="regulariser lam (W, I)")
    max_preserve: int = Field(200, description="preserved prompts used at most")
    positions: Literal["tokens", "tokens+padding"] = Field(
        "tokens", description="rows='erasekit': positions 1..first [EoT], or every position to the end")
    n_templates: int = Field(
        0, description="templates each target word is put into (0: the bare words, as the paper)")

    PRESETS: ClassVar[dict] = {
        "shapes": {"rows": "erasekit", "lam": 0.1, "positions": "tokens+padding", "n_templates": 15, "eta": 10.0},
    }

    def effective_eta(self, n_preserve: int) -> float:
        if self.eta is not None:
            return self.eta
        return max(0.1, 1 / (1 + n_preserve)) if self.rows == "release-2023" else 1.0


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


def last_word_positions(pipe, prompts: list[str]) -> torch.Tensor:
    """The releases' ``attention_mask.sum() - 2``: the last word token (0, the start token, for "")."""
    return first_eot_positions(pipe, prompts) - 1


def release_2023_rows(pipe, sources: list[str], anchors: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows from each prompt's last word token on, paired from there, both cut to the shorter run."""
    emb_s, emb_a = encode_prompts(pipe, sources), encode_prompts(pipe, anchors)
    f_s, f_a = last_word_positions(pipe, sources), last_word_positions(pipe, anchors)
    length = emb_s.shape[1]
    rows_s, rows_a = [], []
    for i in range(len(sources)):
        s, a = int(f_s[i]), int(f_a[i])
        n = length - max(s, a)
        rows_s.append(emb_s[i, s : s + n])
        rows_a.append(emb_a[i, a : a + n])
    return torch.cat(rows_s), torch.cat(rows_a)


def last_word_rows(pipe, prompts: list[str]) -> torch.Tensor:
    emb = encode_prompts(pipe, prompts)
    return emb[torch.arange(len(prompts)), last_word_positions(pipe, prompts)]


def edit_rows(pipe, sources: list[str], anchors: list[str], preserve: list[str], config: UCEConfig):
    """(source rows, anchor rows, preservation moment or None) for ``config.rows``."""
    if config.rows == "release-2023":
        src, anc = release_2023_rows(pipe, sources, anchors)
        kept = encode_prompts(pipe, [""] + preserve)
        return src, anc, second_moment(kept.reshape(-1, kept.shape[-1]), normalise=False)
    if config.rows == "release-2025":
        src, anc = last_word_rows(pipe, sources), last_word_rows(pipe, anchors)
        return src, anc, second_moment(last_word_rows(pipe, preserve), normalise=False) if preserve else None
    src, anc = paired_token_rows(pipe, sources, anchors, config.positions == "tokens+padding")
    return src, anc, second_moment(prompt_rows(pipe, preserve, config.positions)) if preserve else None


def erase(pipe, concept: ConceptSpec, config: UCEConfig) -> WeightDelta:
    sources, anchors = concept.prompt_pairs(config.n_templates)
    preserve = list(concept.preserve[: config.max_preserve])
    src, anc, moment = edit_rows(pipe, sources, anchors, preserve, config)
    with EditSession(pipe, cross_attention_kv_names(pipe.unet), "uce", config, concept) as session:
        edit_cross_attention_kv(pipe.unet, src, anc, moment, config.effective_eta(len(preserve)), config.lam,
                                normalise=config.rows == "erasekit")
        session.metrics.update(source_rows=int(src.shape[0]), preserve_prompts=len(preserve))
    return session.delta


def _work(spec: MethodSpec, config: UCEConfig, kind: str) -> MethodWork:
    return MethodWork(spec.name, spec.scope_for(config, kind), 0, 0, 0, 0, closed_form=True,
                      notes="closed form: text encoding + one linear solve per K/V projection")


register(MethodSpec("uce", UCEConfig, erase, "closed-form K/V edit on the concept's token embeddings",
                    family="closed-form", default_scope="cross_attn_kv", work=_work))
