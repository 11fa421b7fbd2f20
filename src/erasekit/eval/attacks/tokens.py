"""Token-level tools the prompt attacks share: prompt slots and soft tokens.

- The search vocabulary and the projection to it are `erasekit.models.vocabulary`
  (re-exported here), shared with the adversarial hardening.
- `PromptSlots`: a prompt with ``n`` free token positions (prepended, appended, or
  in place of the concept's words), as token ids in the pipeline's 77-id layout.
- `soft_tokens`: run the text encoder with soft embeddings at given positions (a
  forward hook on its input-embedding layer), differentiably.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from ...models.vocabulary import (project_to_tokens, resolve_vocabulary, search_vocabulary,  # noqa: F401 (re-exported)
                                 shapes_world_words, words_of)

_SPACES = re.compile(r"\s+")

SlotPosition = Literal["prepend", "append", "replace"]


def check_single_tokenizer(pipe) -> None:
    """The attacks encode with one CLIP text encoder (SD-1.x/2.x); SDXL's second encoder is not wired in."""
    if getattr(pipe, "tokenizer_2", None) is not None or getattr(pipe, "text_encoder_2", None) is not None:
        raise NotImplementedError("prompt attacks support pipelines with one text encoder (SD-1.x/2.x), not SDXL yet")


def tokens_to_text(tokenizer, ids: Iterable[int]) -> str:
    """Text of search-vocabulary tokens, joined by single spaces."""
    return " ".join(tokenizer.convert_ids_to_tokens(int(i))[: -len("</w>")] for i in ids)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []


def split_at_words(prompt: str, words: Iterable[str]) -> tuple[str, str]:
    """(before, after) around the first occurrence of any of ``words`` (longest first, ties alphabetical), removed."""
    for w in sorted(set(words), key=lambda w: (-len(w), w)):
        m = re.search(rf"\b{re.escape(w)}\b", prompt, flags=re.IGNORECASE)
        if m:
            return prompt[: m.start()].strip(), prompt[m.end():].strip()
    raise ValueError(f"none of the concept's words {sorted(set(words))} occurs in the prompt {prompt!r}")


def remove_words(prompt: str, words: Iterable[str]) -> str:
    """``prompt`` without every occurrence of ``words`` (a benign version of a concept prompt)."""
    text = prompt
    for w in sorted(set(words), key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(w)}\b", " ", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+([,.;:])", r"\1", _SPACES.sub(" ", text)).strip()
    return re.sub(r"\b([Aa])n (?=[^aeiouAEIOU\s])", r"\1 ", text)  # "an red" -> after removal "an shape" -> "a shape"


@dataclass(frozen=True)
class PromptSlots:
    """``prefix`` + ``n_slots`` free tokens + ``suffix``, in the tokenizer's padded layout."""

    prefix: str
    suffix: str
    n_slots: int
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    bos: int
    eos: int
    pad: int
    length: int

    @classmethod
    def build(cls, tokenizer, prompt: str, n_slots: int, position: SlotPosition = "prepend",
              concept_words: Iterable[str] = ()) -> "PromptSlots":
        if position == "prepend":
            prefix, suffix = "", prompt
        elif position == "append":
            prefix, suffix = prompt, ""
        elif position == "replace":
            prefix, suffix = split_at_words(prompt, concept_words)
        else:
            raise ValueError(f"unknown slot position {position!r} (prepend, append, replace)")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        slots = cls(prefix, suffix, n_slots, tuple(_ids(tokenizer, prefix)), tuple(_ids(tokenizer, suffix)),
                    tokenizer.bos_token_id, tokenizer.eos_token_id, pad, tokenizer.model_max_length)
        if 2 + len(slots.prefix_ids) + n_slots + len(slots.suffix_ids) > slots.length:
            raise ValueError(f"prompt {prompt!r} with {n_slots} attack tokens exceeds {slots.length} tokens")
        return slots

    @property
    def positions(self) -> list[int]:
        """Indices of the free tokens in the id sequence."""
        start = 1 + len(self.prefix_ids)
        return list(range(start, start + self.n_slots))

    def mask(self) -> torch.Tensor:
        """(length,) bool, True at the free positions."""
        m = torch.zeros(self.length, dtype=torch.bool)
        m[self.positions] = True
        return m

    def ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, length) ids for ``tokens`` (B, n_slots) (or (n_slots,) -> (1, length))."""
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1, self.n_slots)
        b = tokens.shape[0]
        head = torch.tensor([self.bos, *self.prefix_ids], dtype=torch.long).expand(b, -1)
        tail = torch.tensor([*self.suffix_ids, self.eos], dtype=torch.long).expand(b, -1)
        seq = torch.cat([head, tokens, tail], dim=1)
        padding = torch.full((b, self.length - seq.shape[1]), self.pad, dtype=torch.long)
        return torch.cat([seq, padding], dim=1)

    def text(self, tokenizer, tokens: Iterable[int]) -> str:
        return " ".join(p for p in (self.prefix, tokens_to_text(tokenizer, tokens), self.suffix) if p)


def embedding_matrix(text_encoder) -> torch.Tensor:
    return text_encoder.get_input_embeddings().weight


@contextlib.contextmanager
def soft_tokens(text_encoder, mask: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """Inside the block, the text encoder reads ``values`` (B, n, D) where ``mask`` (B, L) is True.

    Each row of ``mask`` has exactly ``n`` True entries (the free token positions,
    in order); gradients flow into ``values``.
    """
    layer = text_encoder.get_input_embeddings()
    if int(mask.sum()) != values.shape[0] * values.shape[1] or values.shape[0] != mask.shape[0]:
        raise ValueError(f"mask marks {int(mask.sum())} positions, values give {values.shape[0]} x {values.shape[1]}")

    def hook(module, inputs, output):
        out = output.clone()
        out[mask.to(out.device)] = values.reshape(-1, values.shape[-1]).to(dtype=out.dtype, device=out.device)
        return out

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_ids(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    """(B, L, D) conditioning of SD-1.x/2.x pipelines (last hidden state, no attention mask)."""
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0]
