"""The token vocabulary a prompt search may use, and the projection of soft embeddings onto it.

- `search_vocabulary`: the round-trip-safe whole-word tokens: ``...</w>`` tokens of
  ASCII letters and digits whose text tokenizes back to exactly that one id, so a
  found prompt written as text (tokens joined by spaces) reads back to the same ids.
- `resolve_vocabulary`: that set, or the part of it a named word list allows.
- `project_to_tokens`: nearest allowed token of each soft embedding (cosine or L2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import torch

_WORD_TOKEN = re.compile(r"[a-z0-9]+")
_VOCAB_CACHE: dict[tuple, torch.Tensor] = {}


def words_of(texts: Iterable[str]) -> set[str]:
    """Lower-case words of ``texts`` (for excluding a concept's own words from the search)."""
    return {w for t in texts for w in _WORD_TOKEN.findall(t.lower())}


def search_vocabulary(tokenizer, exclude_words: Iterable[str] = ()) -> torch.Tensor:
    """Sorted ids of the round-trip-safe whole-word tokens, minus ``exclude_words`` (see module docstring)."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer))
    if key not in _VOCAB_CACHE:
        words = [(i, w[: -len("</w>")]) for w, i in tokenizer.get_vocab().items()
                 if w.endswith("</w>") and _WORD_TOKEN.fullmatch(w[: -len("</w>")])]
        encoded = tokenizer([w for _, w in words], add_special_tokens=False).input_ids
        _VOCAB_CACHE[key] = torch.tensor(sorted(i for (i, _), e in zip(words, encoded) if e == [i]), dtype=torch.long)
    ids = _VOCAB_CACHE[key]
    banned = {w.lower() for w in exclude_words}
    if banned:
        vocab = tokenizer.get_vocab()
        drop = torch.tensor(sorted(vocab[w + "</w>"] for w in banned if w + "</w>" in vocab), dtype=torch.long)
        ids = ids[~torch.isin(ids, drop)]
    if len(ids) == 0:
        raise ValueError("the search vocabulary is empty")
    return ids


def shapes_world_words() -> set[str]:
    """Every word the Shapes world's captions use (all wording tiers and templates): its text encoder's dictionary."""
    from ..world.vocabulary import load_vocabulary

    vocab = load_vocabulary()
    phrases = [w for a in vocab.wording.values() for tiers in a.values() for words in tiers.values() for w in words]
    return words_of(phrases + [t.replace("{np}", " ") for t in vocab.templates] + ["shape"])


def resolve_vocabulary(tokenizer, vocabulary: str = "tokenizer", exclude_words: Iterable[str] = ()) -> torch.Tensor:
    """The token ids an attack searches.

    ``tokenizer``: every round-trip-safe whole-word token; ``shapes-world``: those
    among the Shapes world's caption words (the only tokens its text encoder was
    trained on; the rest keep their random initial embeddings); any other value
    is a UTF-8 text file of words (whitespace-separated).
    """
    ids = search_vocabulary(tokenizer, exclude_words)
    if vocabulary == "tokenizer":
        return ids
    if vocabulary == "shapes-world":
        words = shapes_world_words()
    else:
        from pathlib import Path

        path = Path(vocabulary)
        if not path.is_file():
            raise ValueError(f"vocabulary must be 'tokenizer', 'shapes-world' or a word-list file; got {vocabulary!r}")
        words = words_of([path.read_text(encoding="utf-8")])
    known = tokenizer.get_vocab()
    keep = torch.tensor(sorted({known[w + "</w>"] for w in words if w + "</w>" in known}), dtype=torch.long)
    ids = ids[torch.isin(ids, keep)]
    if len(ids) == 0:
        raise ValueError(f"vocabulary {vocabulary!r} has no token of the search vocabulary")
    return ids


@torch.no_grad()
def project_to_tokens(soft: torch.Tensor, embeddings: torch.Tensor, allowed: torch.Tensor,
                      metric: Literal["cosine", "l2"] = "cosine", chunk: int = 8192) -> torch.Tensor:
    """Nearest allowed token id for each soft embedding (..., D) -> (...) ids."""
    flat = soft.detach().reshape(-1, soft.shape[-1]).float()
    best_score = torch.full((flat.shape[0],), -float("inf"))
    best_id = torch.zeros(flat.shape[0], dtype=torch.long)
    q = torch.nn.functional.normalize(flat, dim=-1) if metric == "cosine" else flat
    for start in range(0, len(allowed), chunk):
        ids = allowed[start : start + chunk]
        e = embeddings[ids.to(embeddings.device)].detach().float().cpu()
        if metric == "cosine":
            score = q.cpu() @ torch.nn.functional.normalize(e, dim=-1).T
        elif metric == "l2":
            score = -torch.cdist(q.cpu(), e)
        else:
            raise ValueError(f"unknown projection metric {metric!r} (cosine, l2)")
        value, index = score.max(dim=1)
        better = value > best_score
        best_score = torch.where(better, value, best_score)
        best_id = torch.where(better, ids[index], best_id)
    return best_id.reshape(soft.shape[:-1])
