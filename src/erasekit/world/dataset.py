"""Fixed, seeded datasets of rendered Shapes scenes (for training the world's models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .render import render, sample_scene
from .vocabulary import ATTRIBUTES, VALUES


def labels_of(scene) -> np.ndarray:
    """Integer labels (shape, color, style, background) of a scene."""
    return np.array([VALUES[a].index(getattr(scene, a)) for a in ATTRIBUTES], dtype=np.int64)


def render_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random scenes: images uint8 (n,64,64,3) and labels int64 (n,4)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 64, 64, 3), dtype=np.uint8)
    labels = np.empty((n, len(ATTRIBUTES)), dtype=np.int64)
    for i in range(n):
        scene = sample_scene(rng)
        images[i] = np.asarray(render(scene))
        labels[i] = labels_of(scene)
    return images, labels


def cached_dataset(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render once and cache as .npz (no pickled objects) under ``path``."""
    path = Path(path)
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            if len(data["images"]) == n:
                return data["images"], data["labels"]
    images, labels = render_dataset(n, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, labels=labels)
    tmp.replace(path)
    return images, labels


def to_tensor_range(images: np.ndarray):
    """uint8 NHWC -> float NCHW in [-1, 1] (the VAE's input range)."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0
