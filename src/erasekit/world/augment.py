"""Augmentations that mimic generation artefacts, for training the detector.

Colour hue is a label, so colour changes stay small (gain per channel within
+-8%); geometry, blur, grain and low-frequency background noise are strong.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x: (N,3,64,64) in [-1,1]."""
    n = x.shape[0]
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    # small affine warp
    ang = (r(n) - 0.5) * 2 * math.radians(10)
    scale = 0.9 + 0.2 * r(n)
    shear = (r(n) - 0.5) * 0.2
    tx, ty = (r(n) - 0.5) * 0.15, (r(n) - 0.5) * 0.15
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    # blur (box-ish gaussian) on half the batch
    k = torch.tensor([0.25, 0.5, 0.25])
    kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    mix = (r(n, 1, 1, 1) < 0.5).float() * r(n, 1, 1, 1)
    x = x * (1 - mix) + blurred * mix
    # brightness / contrast / per-channel gain
    x = x * (0.85 + 0.3 * r(n, 1, 1, 1)) + (r(n, 1, 1, 1) - 0.5) * 0.2
    x = x * (1 + (r(n, 3, 1, 1) - 0.5) * 0.16)
    # low-frequency blotches (grainy, tinted backgrounds) and pixel noise
    blot = F.interpolate(torch.randn(n, 3, 8, 8, generator=gen), size=64, mode="bilinear", align_corners=False)
    x = x + blot * 0.08 * r(n, 1, 1, 1)
    x = x + torch.randn(x.shape, generator=gen) * 0.1 * r(n, 1, 1, 1)
    return x.clamp(-1, 1)
