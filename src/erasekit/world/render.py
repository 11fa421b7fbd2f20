"""Deterministic renderer of 64x64 Shapes scenes with known ground truth.

A scene is one object with a shape, a color, a style (texture) and a background,
at a random position and size.  ``render(scene)`` is a pure function of the scene
(including its geometry), and ``sample_scene(rng)`` draws a scene from a seeded
numpy Generator, so a seed fully determines an image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import BACKGROUNDS, COLORS, SHAPES, STYLES

SIZE = 64
_SS = 4  # supersampling factor for anti-aliased edges

RGB = {
    "red": (220, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (35, 80, 225),
    "purple": (140, 45, 190),
}
BACKGROUND_RGB = {"dark": (22, 22, 28), "light": (236, 236, 228), "gray": (128, 128, 128)}


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    style: str
    background: str
    cx: float = 32.0  # centre, pixels
    cy: float = 32.0
    radius: float = 18.0  # half extent, pixels
    angle: float = 0.0  # rotation of stripes, degrees
    tint: tuple[int, int, int] = (0, 0, 0)  # small background colour variation

    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "style": self.style, "background": self.background}

    def to_dict(self) -> dict:
        return asdict(self)


def sample_scene(rng: np.random.Generator, **fixed: str) -> Scene:
    """Draw a random scene; attributes given in ``fixed`` are kept."""
    attrs = {
        "shape": fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))],
        "color": fixed.get("color") or COLORS[rng.integers(len(COLORS))],
        "style": fixed.get("style") or STYLES[rng.integers(len(STYLES))],
        "background": fixed.get("background") or BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
    }
    radius = float(rng.uniform(13, 24))
    margin = radius + 2
    cx, cy = (float(v) for v in rng.uniform(margin, SIZE - margin, size=2))
    angle = float(rng.uniform(20, 70))
    tint = tuple(int(v) for v in rng.integers(-10, 11, size=3))
    return Scene(**attrs, cx=cx, cy=cy, radius=radius, angle=angle, tint=tint)


def polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """The outline of ``shape`` at centre (cx, cy) and half extent ``r`` as polygon vertices (None: a circle)."""
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.42
            a = math.radians(-90 + 36 * k)
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "cross":
        w = r * 0.34
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]
    if shape == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + r * x / 17, cy - r * (y + 2.5) / 17))
        return pts
    return None  # circle


def _shape_mask(scene: Scene, scale: int) -> Image.Image:
    return _draw_mask(scene.shape, scene.cx * scale, scene.cy * scale, scene.radius * scale, SIZE * scale)


def _draw_mask(shape: str, cx: float, cy: float, r: float, n: int) -> Image.Image:
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    poly = polygon(shape, cx, cy, r)
    if poly is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return mask


def shape_mask(shape: str, cx: float, cy: float, radius: float, size: int = SIZE) -> np.ndarray:
    """The (size, size) boolean silhouette of ``shape`` at centre (cx, cy) and half extent ``radius``
    (pixels), drawn as `render` draws it: supersampled, a pixel inside when over half of it is covered."""
    big = _draw_mask(shape, cx * _SS, cy * _SS, radius * _SS, size * _SS)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX)) > 127


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` pixels of its border (binary erosion by a box)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def render(scene: Scene) -> Image.Image:
    """Render a scene to a 64x64 RGB PIL image."""
    n = SIZE * _SS
    bg = np.clip(np.array(BACKGROUND_RGB[scene.background]) + np.array(scene.tint), 0, 255)
    fg = np.array(RGB[scene.color], dtype=np.float64)
    mask = np.array(_shape_mask(scene, _SS)) > 127
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64) / _SS
    if scene.style == "solid":
        paint = mask
    elif scene.style == "outlined":
        paint = _edge(mask, int(2.2 * _SS))
    elif scene.style == "striped":
        a = math.radians(scene.angle)
        phase = (xx * math.cos(a) + yy * math.sin(a)) / 6.0
        paint = mask & ((phase % 1.0) < 0.5) | _edge(mask, _SS)
    elif scene.style == "dotted":
        gx = (xx - scene.cx) % 6.0 - 3.0
        gy = (yy - scene.cy) % 6.0 - 3.0
        paint = mask & (gx**2 + gy**2 < 1.8**2) | _edge(mask, _SS)
    else:
        raise ValueError(f"unknown style {scene.style!r}")
    img = np.empty((n, n, 3), dtype=np.float64)
    img[:] = bg
    img[paint] = fg
    big = Image.fromarray(img.round().astype(np.uint8))
    return big.resize((SIZE, SIZE), Image.Resampling.BOX)


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """Render scenes into a uint8 array of shape (N, 64, 64, 3)."""
    return np.stack([np.asarray(render(s)) for s in scenes])
