"""Concept detectors behind one interface (`ConceptDetector`), looked up by name.

- ``shapes``: the Shapes world's detector (target value probability / argmax).
- ``nudenet``: NudeNet v3 ONNX (labels and threshold are settings).
- ``q16``: Q16 on CLIP ViT-L/14 (``clip_path`` or $ERASEKIT_CLIP, else the Hub id).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

from .base import ConceptDetector, Detection, DetectorUnavailableError


def _shapes(**options) -> ConceptDetector:
    from .shapes import ShapesConceptDetector

    return ShapesConceptDetector(**options)


def _nudenet(**options) -> ConceptDetector:
    from .nudenet import NudeNetDetector

    return NudeNetDetector(**options)


def _q16(**options) -> ConceptDetector:
    from .q16 import Q16Detector

    return Q16Detector(**options)


_REGISTRY: dict[str, Callable[..., ConceptDetector]] = {"shapes": _shapes, "nudenet": _nudenet, "q16": _q16}


class UnknownDetectorError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_detector(name: str, factory: Callable[..., ConceptDetector]) -> None:
    """Add a detector factory (keyword options -> detector) under ``name``."""
    _REGISTRY[name] = factory


def list_detectors() -> list[str]:
    return sorted(_REGISTRY)


def get_detector(name: str, **options: Any) -> ConceptDetector:
    """Build the detector ``name`` with its options (e.g. ``threshold=``, ``labels=``, ``clip_path=``)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=2, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownDetectorError(f"unknown detector {name!r}{hint} (available: {', '.join(list_detectors())})")
    return _REGISTRY[name](**options)


__all__ = ["ConceptDetector", "Detection", "DetectorUnavailableError", "UnknownDetectorError",
           "get_detector", "list_detectors", "register_detector"]
