"""General prompts of the Shapes world (its COCO): explicit captions of random scenes."""

from __future__ import annotations

import re

import numpy as np

from .captions import describe
from .render import sample_scene
from .vocabulary import load_vocabulary


def general_captions(n: int = 400, seed: int = 1234, exclude_words: list[str] | None = None) -> list[str]:
    """``n`` distinct-seeded explicit captions; captions naming any ``exclude_words`` are skipped."""
    templates = load_vocabulary().templates
    rng = np.random.default_rng(seed)
    banned = [re.compile(rf"\b{re.escape(w.lower())}\b") for w in (exclude_words or [])]
    out: list[str] = []
    while len(out) < n:
        scene = sample_scene(rng)
        attrs = scene.attributes()
        keep = [a for a in attrs if rng.random() < 0.7] or ["shape"]
        text = describe({a: attrs[a] for a in keep}, "explicit", templates[rng.integers(len(templates))])
        if not any(b.search(text) for b in banned):
            out.append(text)
    return out
