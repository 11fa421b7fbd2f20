"""The Shapes world's detector behind the `ConceptDetector` interface.

Score: the detector's probability of the target value (in its attribute's head);
decision: the head's argmax equals the target value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...world.vocabulary import VALUES, load_vocabulary
from .base import Detection


class ShapesConceptDetector:
    name = "shapes"

    def __init__(self, detector=None):
        if detector is None:
            from ...world.assets_paths import load_detector

            detector = load_detector()
        self.model = detector

    def detect(self, images, concept: str | None = None) -> Detection:
        if concept is None:
            raise ValueError("the shapes detector needs the target concept (a Shapes-world value, e.g. 'circle')")
        attribute = load_vocabulary().attribute_of(concept)
        probs = self.model.probabilities(images)[attribute]
        index = VALUES[attribute].index(concept)
        scores = probs[:, index].cpu().numpy().astype(np.float64)
        decisions = (probs.argmax(dim=1) == index).cpu().numpy()
        return Detection(scores=scores, decisions=decisions)

    def read(self, images) -> dict[str, list[str]]:
        """The value read per attribute (for adherence checks)."""
        return self.model.predict(images)

    def features(self, images) -> np.ndarray:
        """Penultimate features (N, D) for Frechet distances."""
        import torch

        from ...world.detector import as_detector_input

        x = as_detector_input(images)
        with torch.no_grad():
            return torch.cat([self.model.features(x[i:i + 256]) for i in range(0, len(x), 256)]).double().numpy()

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "decision": "argmax of the attribute head equals the target value",
                "score": "softmax probability of the target value", "width": self.model.width}
