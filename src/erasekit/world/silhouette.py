"""A second reader of Shapes images, by geometry and colour alone: no trained weights.

`read(image)` finds the object and reads its shape and colour:

- **background**: the median colour of the image's 2-pixel border;
- **object**: the pixels whose colour lies more than ``threshold`` (RGB distance) from the background,
  closed with a disc of radius 3 pixels and filled, so that an outlined, striped or dotted object gives
  its whole area; the largest connected part is kept (the *silhouette*);
- **shape**: for every shape, its ideal silhouette as `render` draws it (`render.shape_mask`), placed
  and scaled to the silhouette's bounding box (by its width, its height or their mean, whichever
  overlaps best), and its overlap with the silhouette as intersection over union; the shape read is
  the one that overlaps most;
- **colour**: the palette colour (`render.RGB`) nearest the median of the object's most differing
  pixels (the quarter farthest from the background: edge pixels blend the two colours).

An image with fewer than ``min_pixels`` differing pixels has no object: shape and colour None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from .render import RGB, polygon, shape_mask
from .vocabulary import COLORS, SHAPES

THRESHOLD = 40.0
MIN_PIXELS = 20
_BORDER = 2
_CLOSE_RADIUS = 3


@dataclass(frozen=True)
class Reading:
    """What `read` finds in one image: the shape and colour read (None: no object), every shape's
    overlap with the silhouette, the silhouette's size in pixels and the object's colour (RGB)."""

    shape: str | None
    color: str | None
    overlaps: dict[str, float]
    pixels: int
    rgb: tuple[float, float, float] | None = None

    def margin(self, value: str) -> float:
        """``value``'s overlap minus the largest overlap of any other shape (> 0: ``value`` is read)."""
        return self.overlaps[value] - max(v for k, v in self.overlaps.items() if k != value)


@lru_cache(maxsize=None)
def _unit_box(shape: str) -> tuple[float, float, float, float]:
    """(left, right, top, bottom) of ``shape`` at centre (0, 0) and radius 1, as `render` places it."""
    points = polygon(shape, 0.0, 0.0, 1.0) or [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 360)]
    xs, ys = zip(*points)
    return min(xs), max(xs), min(ys), max(ys)


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx**2 + yy**2 <= radius**2


def background(pixels: np.ndarray) -> np.ndarray:
    """The median colour of an (H, W, 3) image's border."""
    border = np.concatenate([pixels[:_BORDER].reshape(-1, 3), pixels[-_BORDER:].reshape(-1, 3),
                             pixels[:, :_BORDER].reshape(-1, 3), pixels[:, -_BORDER:].reshape(-1, 3)])
    return np.median(border, axis=0)


def object_pixels(pixels: np.ndarray, threshold: float = THRESHOLD, bg: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: the pixels of an (H, W, 3) image whose colour differs from the background's
    (``bg``, default `background`)."""
    bg = background(pixels) if bg is None else bg
    return np.linalg.norm(pixels - bg, axis=2) > threshold


def silhouette(differing: np.ndarray) -> np.ndarray:
    """The largest connected part of the differing pixels, closed (disc of radius 3) and filled."""
    pad = _CLOSE_RADIUS + 1
    closed = ndimage.binary_closing(np.pad(differing, pad), structure=_disc(_CLOSE_RADIUS))[pad:-pad, pad:-pad]
    filled = ndimage.binary_fill_holes(closed)
    labels, n = ndimage.label(filled)
    if n == 0:
        return filled
    sizes = ndimage.sum(filled, labels, range(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def shape_overlaps(region: np.ndarray) -> dict[str, float]:
    """Intersection over union of ``region`` with every shape's ideal silhouette fitted to its bounding box."""
    ys, xs = np.nonzero(region)
    left, right, top, bottom = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    out = {}
    for shape in SHAPES:
        x0, x1, y0, y1 = _unit_box(shape)
        by_width, by_height = (right - left) / (x1 - x0), (bottom - top) / (y1 - y0)
        best = 0.0
        for r in (by_width, by_height, (by_width + by_height) / 2):
            cx = (left + right) / 2 - (x0 + x1) / 2 * r
            cy = (top + bottom) / 2 - (y0 + y1) / 2 * r
            ideal = shape_mask(shape, cx, cy, r, size=region.shape[0])
            best = max(best, float((ideal & region).sum() / max(1, (ideal | region).sum())))
        out[shape] = best
    return out


def nearest_color(rgb: np.ndarray) -> str:
    """The palette colour nearest (RGB distance) to ``rgb``."""
    return min(COLORS, key=lambda c: float(np.linalg.norm(np.asarray(RGB[c], dtype=np.float64) - rgb)))


def read(image: Image.Image, threshold: float = THRESHOLD, min_pixels: int = MIN_PIXELS) -> Reading:
    """The shape and colour of the object in a square Shapes image (see the module docstring)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    if pixels.shape[0] != pixels.shape[1]:
        raise ValueError(f"a Shapes image is square, got {pixels.shape[1]}x{pixels.shape[0]}")
    bg = background(pixels)
    differing = object_pixels(pixels, threshold, bg)
    if differing.sum() < min_pixels:
        return Reading(None, None, {s: 0.0 for s in SHAPES}, 0)
    region = silhouette(differing)
    overlaps = shape_overlaps(region)
    inside = pixels[differing & region]
    far = np.linalg.norm(inside - bg, axis=1)
    rgb = np.median(inside[far >= np.quantile(far, 0.75)], axis=0)
    return Reading(max(overlaps, key=overlaps.get), nearest_color(rgb), overlaps, int(region.sum()),
                   tuple(float(v) for v in rgb))
