"""Text conditioning for UNet calls, the same for SD-1.x/2.x and SDXL.

SD-1.x/2.x UNets read one tensor, the text encoder's hidden states.  SDXL's
UNet (``addition_embed_type="text_time"``) also reads two *added conditions*
through its time embedding: ``text_embeds``, the pooled output of the second
text encoder, and ``time_ids``, the six micro-conditioning numbers (original
size, crop top-left, target size).  A `TextCondition` carries all of them for
N prompts, row-aligned, so fine-tuning methods can slice, concatenate and
batch prompts without caring which family they run on.

`encode_conditions` builds them exactly as the pipeline conditions its UNet
at generation time:

- hidden states (and SDXL's pooled embedding) come from the pipeline's own
  ``encode_prompt``;
- SDXL ``time_ids`` are ``(H, W, 0, 0, H, W)`` with ``H, W`` the pixel size of
  the UNet's default latents (``sample_size * vae_scale_factor``): what
  ``StableDiffusionXLPipeline`` uses when no sizes or crops are given;
- on SDXL pipelines with ``force_zeros_for_empty_prompt`` (the default), the
  empty prompt ``""`` is encoded as zeros (hidden states and pooled), because
  that is the unconditional branch of SDXL's classifier-free guidance; the
  methods' ``eps(z, "")`` then means what the sampler actually computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)


@dataclass(frozen=True)
class TextCondition:
    """Row-aligned conditioning of N prompts: ``embeds`` (N, L, D), SDXL ``pooled`` (N, P) and ``time_ids`` (N, 6)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __post_init__(self):
        n = self.embeds.shape[0]
        for name in ("pooled", "time_ids"):
            extra = getattr(self, name)
            if extra is not None and extra.shape[0] != n:
                raise ValueError(f"{name} has {extra.shape[0]} rows, embeds {n}")
        if (self.pooled is None) != (self.time_ids is None):
            raise ValueError("SDXL conditioning needs both pooled and time_ids (or neither)")

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    def __getitem__(self, index) -> "TextCondition":
        pick = (lambda t: None if t is None else t[index])
        if isinstance(index, torch.Tensor):
            index = index.to(self.embeds.device)
        return TextCondition(self.embeds[index], pick(self.pooled), pick(self.time_ids))

    @property
    def device(self) -> torch.device:
        return self.embeds.device

    @property
    def has_added_conditions(self) -> bool:
        return self.pooled is not None

    def to(self, *args, **kwargs) -> "TextCondition":
        move = (lambda t: None if t is None else t.to(*args, **kwargs))
        return TextCondition(self.embeds.to(*args, **kwargs), move(self.pooled), move(self.time_ids))

    def with_embeds(self, embeds: torch.Tensor) -> "TextCondition":
        """The same prompts with other hidden states (e.g. noised ones); added conditions are kept."""
        return replace(self, embeds=embeds)

    def expand(self, batch: int) -> "TextCondition":
        """Broadcast a one-row condition to ``batch`` rows (a view, no copy)."""
        if len(self) != 1 or batch == 1:
            return self
        grow = (lambda t: None if t is None else t.expand(batch, *t.shape[1:]))
        return TextCondition(grow(self.embeds), grow(self.pooled), grow(self.time_ids))

    def added_cond_kwargs(self) -> dict[str, torch.Tensor] | None:
        """SDXL's ``added_cond_kwargs`` for a UNet call, or None for SD-1.x/2.x."""
        if self.pooled is None:
            return None
        return {"text_embeds": self.pooled, "time_ids": self.time_ids}


Condition = torch.Tensor | TextCondition


def cat_conditions(items: Sequence[Condition]) -> Condition:
    """Concatenate conditions along the prompt axis (plain tensors stay tensors)."""
    if all(isinstance(c, torch.Tensor) for c in items):
        return torch.cat(list(items))
    if not all(isinstance(c, TextCondition) for c in items):
        raise TypeError("cannot concatenate plain embeddings with TextCondition objects")
    sdxl = {c.has_added_conditions for c in items}
    if len(sdxl) != 1:
        raise ValueError("cannot concatenate SDXL and SD conditions")
    cat = (lambda name: torch.cat([getattr(c, name) for c in items]))
    if sdxl.pop():
        return TextCondition(cat("embeds"), cat("pooled"), cat("time_ids"))
    return TextCondition(cat("embeds"))


def expand_condition(cond: Condition, batch: int) -> Condition:
    if isinstance(cond, TextCondition):
        return cond.expand(batch)
    return cond.expand(batch, *cond.shape[1:]) if cond.shape[0] == 1 and batch > 1 else cond


# ------------------------------------------------------------------ building them from a pipeline
def uses_added_conditions(unet) -> bool:
    """True for SDXL-style UNets (pooled text + time ids through the time embedding)."""
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def default_image_size(pipe) -> tuple[int, int]:
    """Pixel (height, width) of the UNet's default latents, as the pipeline computes them."""
    size = pipe.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    return h * factor, w * factor


def sdxl_time_ids(pipe, n: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, 6) ``time_ids`` = (H, W, 0, 0, H, W), checked against the UNet's added-embedding width."""
    h, w = default_image_size(pipe)
    unet = pipe.unet
    pooled_dim = int(pipe.text_encoder_2.config.projection_dim) if getattr(pipe, "text_encoder_2", None) is not None \
        else int(unet.config.projection_class_embeddings_input_dim) - TIME_IDS * int(unet.config.addition_time_embed_dim)
    expected = unet.add_embedding.linear_1.in_features
    given = int(unet.config.addition_time_embed_dim) * TIME_IDS + pooled_dim
    if given != expected:
        raise ValueError(f"SDXL UNet expects an added embedding of width {expected}, the text encoder and time ids "
                         f"give {given}: the pipeline's components do not belong together")
    row = torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype)
    return row.repeat(n, 1).to(unet.device)


@torch.no_grad()
def encode_conditions(pipe, prompts: list[str], batch_size: int = 64) -> TextCondition:
    """Everything the pipeline's UNet reads for ``prompts`` (see the module docstring)."""
    if not prompts:
        raise ValueError("no prompts to encode")
    device = pipe.unet.device
    embeds, pooled = [], []
    for i in range(0, len(prompts), batch_size):
        out = pipe.encode_prompt(prompts[i : i + batch_size], device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False)
        embeds.append(out[0])
        if len(out) == 4:  # SDXL: (embeds, negative, pooled, negative_pooled)
            pooled.append(out[2])
    emb = torch.cat(embeds)
    if not uses_added_conditions(pipe.unet):
        return TextCondition(emb)
    if not pooled:
        raise ValueError("this UNet needs pooled text embeddings (SDXL), but the pipeline's encode_prompt gives none")
    pool = torch.cat(pooled)
    if getattr(getattr(pipe, "config", None), "force_zeros_for_empty_prompt", False):
        empty = torch.tensor([p == "" for p in prompts], device=emb.device)
        if bool(empty.any()):
            emb = torch.where(empty[:, None, None], torch.zeros_like(emb), emb)
            pool = torch.where(empty[:, None], torch.zeros_like(pool), pool)
    return TextCondition(emb, pool, sdxl_time_ids(pipe, len(prompts), dtype=emb.dtype))
