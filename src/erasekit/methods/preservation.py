"""Preservation statistics for closed-form edits: mean c c^T over general prompts, cached.

The cache is a safetensors file holding the (D, D) float64 second moment and
the prompt count, with metadata naming how embeddings were taken ("eot" or
"tokens"), a fingerprint of the text conditioning (so a cache from another
text encoder is refused) and a hash of the prompt list.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models.text import encode_prompts, first_eot_positions
from .closed_form import second_moment


def word_count_positions(prompts: list[str], length: int) -> torch.Tensor:
    """The position the TRCE release takes for the first [EoT]: the prompt's word count + 1.

    It equals the token-id position only when every whitespace-separated word is one token.
    """
    return torch.tensor([min(len(p.split()) + 1, length - 1) for p in prompts])


def eot_positions(pipe, prompts: list[str], eot: str = "token-id", length: int = 77) -> torch.Tensor:
    """First [EoT] index per prompt: from the token ids ("token-id") or by counting words ("word-count")."""
    if eot == "token-id":
        return first_eot_positions(pipe, prompts)
    if eot == "word-count":
        return word_count_positions(prompts, length)
    raise ValueError(f"unknown eot {eot!r} (token-id or word-count)")


def prompt_rows(pipe, prompts: list[str], mode: str, eot: str = "token-id") -> torch.Tensor:
    """Embeddings (rows) that prompts contribute.

    "eot": the first [EoT]; "tokens": every token up to and including it;
    "eot+padding": the first [EoT] and every padding position after it (SD-1.x
    pads with [EoT] ids, so these are the sequence's end-of-text outputs);
    "tokens+padding": every position after the start token.  ``eot`` says how
    the first [EoT] is found (`eot_positions`).
    """
    emb = encode_prompts(pipe, prompts)
    ends = eot_positions(pipe, prompts, eot, emb.shape[1])
    if mode == "eot":
        return emb[torch.arange(len(prompts)), ends]
    if mode == "tokens":
        return torch.cat([emb[i, 1 : int(e) + 1] for i, e in enumerate(ends)])
    if mode == "eot+padding":
        return torch.cat([emb[i, int(e) :] for i, e in enumerate(ends)])
    if mode == "tokens+padding":
        return emb[:, 1:].reshape(-1, emb.shape[-1])
    raise ValueError(f"unknown embedding mode {mode!r} (eot, tokens, eot+padding or tokens+padding)")


def paired_eot_rows(pipe, sources: list[str], anchors: list[str], padding: bool,
                    eot: str = "token-id") -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows and their anchor rows: the first [EoT] of each pair, and with ``padding`` also the
    k-th padding position after it paired with the anchor's k-th (as many as both prompts have)."""
    if not padding:
        return prompt_rows(pipe, sources, "eot", eot), prompt_rows(pipe, anchors, "eot", eot)
    emb_s, emb_a = encode_prompts(pipe, sources), encode_prompts(pipe, anchors)
    end_s, end_a = eot_positions(pipe, sources, eot, emb_s.shape[1]), eot_positions(pipe, anchors, eot, emb_a.shape[1])
    length = emb_s.shape[1]
    rows_s, rows_a = [], []
    for i in range(len(sources)):
        s, a = int(end_s[i]), int(end_a[i])
        n = length - max(s, a)
        rows_s.append(emb_s[i, s : s + n])
        rows_a.append(emb_a[i, a : a + n])
    return torch.cat(rows_s), torch.cat(rows_a)


def text_fingerprint(pipe) -> str:
    """Identifies the text conditioning: embeddings of a fixed probe prompt."""
    probe = encode_prompts(pipe, ["a photo of a cat"]).float().cpu().numpy().round(4).tobytes()
    return hashlib.sha256(probe).hexdigest()[:16]


def _prompts_hash(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


def preservation_moment(pipe, prompts: list[str], mode: str, cache: str | Path | None = None,
                        eot: str = "token-id") -> torch.Tensor:
    """mean c c^T of the prompts' rows, loaded from / written to ``cache`` when given."""
    if not prompts:
        raise ValueError("preservation needs at least one prompt")
    meta = {"mode": mode if eot == "token-id" else f"{mode}/{eot}", "text": text_fingerprint(pipe),
            "prompts": _prompts_hash(prompts), "count": str(len(prompts))}
    if cache is not None and Path(cache).exists():
        with safe_open(str(cache), framework="pt") as f:
            stored = f.metadata() or {}
            if {k: stored.get(k) for k in meta} == meta:
                return f.get_tensor("moment")
    moment = second_moment(prompt_rows(pipe, prompts, mode, eot))
    if cache is not None:
        cache = Path(cache)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        save_file({"moment": moment.contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, cache)
    return moment


def describe_cache(path: str | Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(json.dumps(f.metadata() or {}))
