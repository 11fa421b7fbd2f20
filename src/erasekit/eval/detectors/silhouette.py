"""The Shapes world's second reader (`world.silhouette`) behind the `ConceptDetector` interface.

It reads shapes and colours by geometry and colour alone, so it shares no weights and no training
data with the Shapes detector: where the two agree, a reading does not rest on the detector.
Decision: the value read equals the target.  Score: for a shape, the target's overlap minus the
largest other shape's (`Reading.margin`); for a colour, the negative RGB distance from the object's
colour to the target's palette colour.  Styles and backgrounds are not read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...world import silhouette
from ...world.render import RGB
from ...world.vocabulary import load_vocabulary
from .base import Detection


class SilhouetteDetector:
    name = "silhouette"

    def __init__(self, threshold: float = silhouette.THRESHOLD):
        self.threshold = threshold

    def detect(self, images, concept: str | None = None) -> Detection:
        try:
            attribute = load_vocabulary().attribute_of(concept) if concept is not None else None
        except KeyError:
            attribute = None
        if attribute not in ("shape", "color"):
            raise ValueError(f"the silhouette reader reads a shape or a colour, not {concept!r}")
        readings = self.read(images)
        if attribute == "shape":
            scores = [r.margin(concept) if r.shape is not None else -1.0 for r in readings]
            decisions = [r.shape == concept for r in readings]
        else:
            scores = [-float(np.linalg.norm(np.asarray(r.rgb) - RGB[concept])) if r.color is not None else -1e3
                      for r in readings]
            decisions = [r.color == concept for r in readings]
        return Detection(scores=np.asarray(scores, dtype=np.float64), decisions=np.asarray(decisions, dtype=bool))

    def read(self, images) -> list[silhouette.Reading]:
        return [silhouette.read(im, self.threshold) for im in images]

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "decision": "the shape (best-overlapping ideal silhouette) or colour "
                "(nearest palette colour) read equals the target value", "threshold": self.threshold}
