"""Seeded, batched image generation with any text-to-image pipeline."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image


@dataclass(frozen=True)
class SamplingSettings:
    """How images are drawn; recorded with every result."""

    steps: int = 25
    guidance_scale: float = 3.0
    height: int | None = None
    width: int | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1 (got {self.steps})")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1 (got {self.batch_size})")
        if not math.isfinite(self.guidance_scale):
            raise ValueError(f"guidance scale must be a finite number (got {self.guidance_scale})")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise ValueError(f"{name} must be at least 8 pixels (got {value})")

    @classmethod
    def for_model(cls, model_dir: str | Path | None, **overrides) -> "SamplingSettings":
        """Defaults from the model card's ``erasekit.json`` (when present), then overrides."""
        base = {}
        if model_dir is not None and (Path(model_dir) / "erasekit.json").exists():
            card = json.loads((Path(model_dir) / "erasekit.json").read_text())
            base = {k: card[k] for k in ("steps", "guidance_scale") if k in card}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def overlong_prompts(pipe, prompts: list[str]) -> str | None:
    """One line saying how many of ``prompts`` the pipeline's tokenizer truncates (None when none is)."""
    tok = getattr(pipe, "tokenizer", None)
    limit = getattr(tok, "model_max_length", None)
    if tok is None or not isinstance(limit, int) or limit > 100_000:
        return None
    unique = list(dict.fromkeys(prompts))
    lengths = [len(ids) for ids in tok(unique, truncation=False)["input_ids"]]
    long = [(p, n) for p, n in zip(unique, lengths) if n > limit]
    if not long:
        return None
    first, n = long[0]
    return (f"{len(long)} prompt(s) exceed the text encoder's {limit} tokens and are truncated "
            f"(first: {first[:40]!r}..., {n} tokens)")


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], settings: SamplingSettings, progress=None) -> list[Image.Image]:
    """One image per (prompt, seed); each image depends only on its own prompt and seed."""
    if not prompts:
        raise ValueError("no prompts to generate from")
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    device = getattr(pipe, "device", torch.device("cpu"))
    images: list[Image.Image] = []
    for start in range(0, len(prompts), settings.batch_size):
        chunk = prompts[start : start + settings.batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start : start + settings.batch_size]]
        kwargs = dict(num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale, generator=gens)
        if settings.height:
            kwargs.update(height=settings.height, width=settings.width or settings.height)
        out = pipe(prompt=chunk, **kwargs)
        images.extend(out.images)
        if progress is not None:
            progress(len(chunk))
    del device
    return images


def image_grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid
