"""Erasure measurement in the Shapes world, read by the detector.

For a target value (e.g. ``circle``), target prompts name it in each wording
tier (explicit, synonym, implicit) next to an explicitly named second
attribute; the target rate is the fraction of images the detector reads as
the target value.  Preservation prompts name the OTHER values of every
attribute explicitly; adherence is the fraction read as named.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..generation import SamplingSettings, generate
from ..world.captions import Mention, caption
from ..world.vocabulary import TIERS, VALUES, load_vocabulary

PARTNER = {"shape": "color", "color": "shape", "style": "shape", "background": "shape"}


def _mention(attribute: str, value: str, tier: str, k: int) -> Mention:
    words = load_vocabulary().words(attribute, value, tier)
    return Mention(value, tier, words[k % len(words)])


def target_prompts(value: str, tier: str, n: int, seed: int = 0) -> list[tuple[str, dict[str, str], int]]:
    vocab = load_vocabulary()
    attribute = vocab.attribute_of(value)
    partner = PARTNER[attribute]
    rows = []
    for k in range(n):
        other = VALUES[partner][k % len(VALUES[partner])]
        mentions = {attribute: _mention(attribute, value, tier, k), partner: _mention(partner, other, "explicit", 0)}
        template = vocab.templates[(k // len(VALUES[partner])) % len(vocab.templates)]
        rows.append((caption(mentions, template), {attribute: value, partner: other}, seed + k))
    return rows


def preservation_prompts(exclude: list[str], n: int, seed: int = 10_000) -> list[tuple[str, dict[str, str], int]]:
    """Explicit prompts naming a shape and a color, neither of them excluded."""
    vocab = load_vocabulary()
    pairs = [(s, c) for s, c in itertools.product(VALUES["shape"], VALUES["color"]) if s not in exclude and c not in exclude]
    rows = []
    for k in range(n):
        s, c = pairs[k % len(pairs)]
        mentions = {"shape": _mention("shape", s, "explicit", 0), "color": _mention("color", c, "explicit", 0)}
        rows.append((caption(mentions, vocab.templates[k % len(vocab.templates)]), {"shape": s, "color": c}, seed + k))
    return rows


def _read(detector, images, rows) -> dict[str, np.ndarray]:
    pred = detector.predict(images)
    return {a: np.array([p == r[1].get(a) for p, r in zip(pred[a], rows)]) for a in pred}


def measure_erasure(pipe, value: str, n_per_tier: int = 32, n_preserve: int = 60,
                    settings: SamplingSettings | None = None, detector=None, progress=None) -> dict:
    """Target rate per tier and preservation adherence for one target value."""
    from ..world.assets_paths import load_detector

    settings = settings or SamplingSettings()
    detector = detector or load_detector()
    attribute = load_vocabulary().attribute_of(value)
    result = {"target": value, "attribute": attribute, "settings": vars(settings).copy(), "target_rate": {}}
    for tier in TIERS:
        rows = target_prompts(value, tier, n_per_tier)
        images = generate(pipe, [r[0] for r in rows], [r[2] for r in rows], settings, progress=progress)
        result["target_rate"][tier] = float(_read(detector, images, rows)[attribute].mean())
    rows = preservation_prompts([value], n_preserve)
    images = generate(pipe, [r[0] for r in rows], [r[2] for r in rows], settings, progress=progress)
    ok = _read(detector, images, rows)
    result["preservation_adherence"] = {"shape": float(ok["shape"].mean()), "color": float(ok["color"].mean()),
                                        "both": float((ok["shape"] & ok["color"]).mean())}
    return result
