"""CLIP (ViT-L/14 by default) image and text embeddings, loaded from a local folder or the Hub.

Where the weights come from, in order: the ``path`` argument (``--clip PATH``), the
``ERASEKIT_CLIP`` environment variable, then the Hub id ``openai/clip-vit-large-patch14``
(which needs a network or a filled Hugging Face cache).  When none works a
`ClipUnavailableError` says, in one line, what to put where.

Preprocessing is CLIP's own (shortest side resized bicubic to the model's image
size, center crop, CLIP mean/std), done with PIL so no torchvision is needed;
a ``preprocessor_config.json`` in the folder overrides size, mean and std.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .detectors.base import DetectorUnavailableError

CLIP_ENV = "ERASEKIT_CLIP"
CLIP_HUB_ID = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipUnavailableError(DetectorUnavailableError):
    """CLIP weights could not be found or loaded; one line for the user."""


def clip_source(path: str | Path | None = None) -> str:
    """The folder or Hub id CLIP is loaded from (argument, then $ERASEKIT_CLIP, then the Hub id)."""
    for value, what in ((path, "--clip"), (os.environ.get(CLIP_ENV), f"${CLIP_ENV}")):
        if value:
            folder = Path(value).expanduser()
            if not (folder / "config.json").is_file():
                raise ClipUnavailableError(f"{what} {folder} is not a CLIP folder (no config.json): put a transformers "
                                           f"CLIPModel export of {CLIP_HUB_ID} there (config, weights, tokenizer files)")
            return str(folder)
    return CLIP_HUB_ID


def _unwrap(out) -> torch.Tensor:
    """get_*_features returns a tensor (older transformers) or an output whose pooler_output is projected."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipEncoder:
    """L2-normalised CLIP image and text embeddings."""

    def __init__(self, model, tokenizer, image_size: int, mean=CLIP_MEAN, std=CLIP_STD, source: str = "",
                 device: str | torch.device = "cpu", batch_size: int = 32):
        self.model, self.tokenizer = model.eval().to(device), tokenizer
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.source, self.device, self.batch_size = source, torch.device(device), batch_size

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> "ClipEncoder":
        from transformers import CLIPModel, CLIPTokenizer

        source = clip_source(path)
        try:
            model = CLIPModel.from_pretrained(source)
            tokenizer = CLIPTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ClipUnavailableError(
                f"CLIP weights {source!r} are not available (offline?): download {CLIP_HUB_ID} as a transformers folder "
                f"and pass --clip PATH or set {CLIP_ENV}=PATH ({str(err).splitlines()[0][:120]})") from None
        size, mean, std = model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD
        pre = Path(source) / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            crop = cfg.get("crop_size", size)
            size = crop.get("height", size) if isinstance(crop, dict) else crop
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        return cls(model, tokenizer, size, mean, std, source=source, device=device)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        s = self.image_size
        out = []
        for im in images:
            im = im.convert("RGB")
            w, h = im.size
            scale = s / min(w, h)
            im = im.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BICUBIC)
            left, top = (im.width - s) // 2, (im.height - s) // 2
            out.append(np.asarray(im.crop((left, top, left + s, top + s)), dtype=np.float32) / 255.0)
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        chunks = []
        for i in range(0, len(images), self.batch_size):
            x = self.preprocess(images[i:i + self.batch_size]).to(self.device)
            chunks.append(_unwrap(self.model.get_image_features(pixel_values=x)).float().cpu())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[i:i + self.batch_size], padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt")
            out = self.model.get_text_features(input_ids=tok.input_ids.to(self.device),
                                               attention_mask=tok.attention_mask.to(self.device))
            chunks.append(_unwrap(out).float().cpu())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def describe(self) -> dict:
        return {"source": self.source, "image_size": self.image_size,
                "projection_dim": int(self.model.config.projection_dim)}
