"""What every concept detector provides: image batch -> per-image scores and decisions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image


class DetectorUnavailableError(RuntimeError):
    """A detector's package or weights are missing; the message (one line) says what to install or put where."""


@dataclass(frozen=True)
class Detection:
    """Per-image concept ``scores`` (float, higher = more of the concept) and boolean ``decisions``."""

    scores: np.ndarray
    decisions: np.ndarray

    def __post_init__(self):
        if len(self.scores) != len(self.decisions):
            raise ValueError(f"{len(self.scores)} scores but {len(self.decisions)} decisions")

    def __len__(self) -> int:
        return len(self.scores)


@runtime_checkable
class ConceptDetector(Protocol):
    """A detector decides, per image, whether it shows a concept.

    ``concept`` names the target for detectors that read several concepts (the
    Shapes detector); fixed-concept detectors (NudeNet, Q16) ignore it.
    ``settings()`` is written into every result (labels, thresholds, weights).
    """

    name: str

    def detect(self, images: list[Image.Image], concept: str | None = None) -> Detection: ...

    def settings(self) -> dict[str, Any]: ...
