"""The Shapes world's concept detector: a small CNN that reads shape, color, style and background.

It is the Shapes world's NudeNet: evaluation uses it to decide whether an image
shows a concept.  Weights are stored as safetensors next to a JSON config.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .vocabulary import ATTRIBUTES, VALUES


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class ShapesDetector(nn.Module):
    """Image batch in [-1, 1] (N,3,64,64) -> logits per attribute."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _block(3, w, 1),
            _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1),
            _block(4 * w, 4 * w, 2),
        )
        self.feature_dim = 8 * w
        self.heads = nn.ModuleDict({a: nn.Linear(self.feature_dim, len(VALUES[a])) for a in ATTRIBUTES})
        self.width = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {a: head(f) for a, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images) -> dict[str, list[str]]:
        """Predicted value per attribute for PIL images, uint8 arrays or [-1,1] tensors."""
        probs = self.probabilities(images)
        return {a: [VALUES[a][i] for i in p.argmax(dim=1).tolist()] for a, p in probs.items()}

    @torch.no_grad()
    def probabilities(self, images) -> dict[str, torch.Tensor]:
        x = as_detector_input(images)
        out = {a: [] for a in ATTRIBUTES}
        for i in range(0, len(x), 256):
            for a, logits in self(x[i : i + 256]).items():
                out[a].append(logits.softmax(dim=1))
        return {a: torch.cat(v) for a, v in out.items()}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "detector.safetensors")
        config = {"width": self.width, "attributes": {a: list(VALUES[a]) for a in ATTRIBUTES}}
        (folder / "detector.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "ShapesDetector":
        folder = Path(folder)
        config = json.loads((folder / "detector.json").read_text())
        if config["attributes"] != {a: list(VALUES[a]) for a in ATTRIBUTES}:
            raise ValueError(f"detector in {folder} was trained for other attribute values")
        model = cls(width=config["width"])
        model.load_state_dict(load_file(folder / "detector.safetensors"), strict=True)
        return model.eval()


def as_detector_input(images) -> torch.Tensor:
    """PIL list / uint8 NHWC array / float tensor in [-1,1] -> float tensor NCHW in [-1,1]."""
    if isinstance(images, torch.Tensor):
        return images.float()
    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
