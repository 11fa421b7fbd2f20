"""Prompt encoding exactly as a pipeline conditions its UNet, plus token bookkeeping.

``encode_prompts`` calls the pipeline's own ``encode_prompt`` so SD-1.x, SD-2.x
(penultimate-layer OpenCLIP) and SDXL (two encoders, concatenated) all give the
tensor their UNet's cross-attention actually reads.
"""

from __future__ import annotations

import torch


def tokenizers_of(pipe) -> list:
    return [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]


def token_ids(pipe, prompts: list[str]) -> torch.Tensor:
    """(N, L) ids from the pipeline's first tokenizer, padded to its max length as the pipeline does."""
    tok = pipe.tokenizer
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids


def first_eot_index(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Index of the FIRST end-of-text token of each row, found from the ids (never by counting words)."""
    is_eos = ids == eos_token_id
    if not bool(is_eos.any(dim=1).all()):
        raise ValueError("a tokenized prompt has no end-of-text token")
    return is_eos.int().argmax(dim=1)


def first_eot_positions(pipe, prompts: list[str]) -> torch.Tensor:
    """First end-of-text index of each prompt, the same for every tokenizer of the pipeline.

    SDXL concatenates its two encoders' hidden states token by token, so the
    [EoT] row a closed-form edit reads is the concatenated vector at that
    position; both tokenizers are CLIP BPE and must put it in the same place
    (they may pad differently).  Raises ValueError when they disagree.
    """
    found = []
    for tok in tokenizers_of(pipe):
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        found.append(first_eot_index(ids, tok.eos_token_id))
    for other in found[1:]:
        if not torch.equal(found[0], other):
            bad = [prompts[i] for i in torch.nonzero(found[0] != other).flatten().tolist()[:3]]
            raise ValueError(f"the pipeline's tokenizers put the first end-of-text token at different positions "
                             f"for {bad}; a per-token closed-form edit needs them aligned")
    return found[0]


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(N, L, D) text conditioning for ``prompts``, as the UNet sees it (no CFG duplication)."""
    if not prompts:
        raise ValueError("no prompts to encode")
    device = pipe.unet.device if hasattr(pipe, "unet") else torch.device("cpu")
    chunks = []
    for i in range(0, len(prompts), batch_size):
        out = pipe.encode_prompt(prompts[i : i + batch_size], device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
        chunks.append(out[0])
    return torch.cat(chunks)


@torch.no_grad()
def encode_prompts_full(pipe, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Every conditioning tensor the UNet needs: ``embeds`` and, for SDXL, ``pooled``."""
    device = pipe.unet.device
    out = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
    result = {"embeds": out[0]}
    if len(out) == 4:  # SDXL: (embeds, negative, pooled, negative_pooled)
        result["pooled"] = out[2]
    return result
