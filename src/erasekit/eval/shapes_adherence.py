"""Prompt adherence of a Shapes-world model, measured by the Shapes detector.

For each wording tier, prompts name a shape and a color (cycling through all
pairs, words of the tier and templates); an image adheres on an attribute when
the detector reads the named value.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..generation import SamplingSettings, generate
from ..world.captions import describe
from ..world.vocabulary import COLORS, SHAPES, TIERS, load_vocabulary


def adherence_prompts(tier: str, n: int, seed: int = 0) -> list[tuple[str, dict[str, str], int]]:
    """``n`` (prompt, expected attributes, seed) triples for one tier, deterministic."""
    templates = load_vocabulary().templates
    pairs = list(itertools.product(SHAPES, COLORS))
    rows = []
    for k in range(n):
        shape, color = pairs[k % len(pairs)]
        choice = k // len(pairs) + k
        template = templates[k % len(templates)]
        values = {"shape": shape, "color": color}
        rows.append((describe(values, tier, template, choice), values, seed + k))
    return rows


def measure_adherence(pipe, per_tier: int = 64, seed: int = 0, settings: SamplingSettings | None = None,
                      detector=None, progress=None) -> dict:
    from ..world.assets_paths import load_detector

    settings = settings or SamplingSettings()
    detector = detector or load_detector()
    table = {"settings": vars(settings).copy(), "per_tier": per_tier, "seed": seed, "tiers": {}}
    for tier in TIERS:
        rows = adherence_prompts(tier, per_tier, seed)
        images = generate(pipe, [r[0] for r in rows], [r[2] for r in rows], settings, progress=progress)
        pred = detector.predict(images)
        shape_ok = np.array([p == r[1]["shape"] for p, r in zip(pred["shape"], rows)])
        color_ok = np.array([p == r[1]["color"] for p, r in zip(pred["color"], rows)])
        table["tiers"][tier] = {
            "shape": float(shape_ok.mean()),
            "color": float(color_ok.mean()),
            "both": float((shape_ok & color_ok).mean()),
        }
    return table
