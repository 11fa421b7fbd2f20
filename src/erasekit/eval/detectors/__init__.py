"""Concept detectors behind one interface (`ConceptDetector`), looked up by name.

- ``shapes``: the Shapes world's detector (target value probability / argmax).
- ``nudenet``: NudeNet v3 ONNX (labels and threshold are settings).
- ``q16``: Q16 on CLIP ViT-L/14 (``clip_path`` or $ERASEKIT_CLIP, else the Hub id).
- ``silhouette``: the Shapes world's second reader, shapes and colours by geometry alone (no weights).
"""

from __future__ import annotations

from typing import Any, Callable

from ...models.registry import Registry, UnknownNameError
from .base import ConceptDetector, Detection, DetectorUnavailableError


class UnknownDetectorError(UnknownNameError):
    """No detector has this name."""


# name -> a factory (keyword options -> detector), imported on first use
DETECTORS: Registry[Callable[..., ConceptDetector]] = Registry("detector", UnknownDetectorError)
DETECTORS.lazy("shapes", "erasekit.eval.detectors.shapes:ShapesConceptDetector")
DETECTORS.lazy("nudenet", "erasekit.eval.detectors.nudenet:NudeNetDetector")
DETECTORS.lazy("q16", "erasekit.eval.detectors.q16:Q16Detector")
DETECTORS.lazy("silhouette", "erasekit.eval.detectors.silhouette:SilhouetteDetector")


def register_detector(name: str, factory: Callable[..., ConceptDetector]) -> None:
    """Add a detector factory (keyword options -> detector) under ``name``."""
    DETECTORS.add(name, factory, overwrite=True)


def list_detectors() -> list[str]:
    return DETECTORS.names()


def get_detector(name: str, **options: Any) -> ConceptDetector:
    """Build the detector ``name`` with its options (e.g. ``threshold=``, ``labels=``, ``clip_path=``)."""
    return DETECTORS.get(name)(**options)


__all__ = ["ConceptDetector", "Detection", "DetectorUnavailableError", "UnknownDetectorError",
           "get_detector", "list_detectors", "register_detector"]
