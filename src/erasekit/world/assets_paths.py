"""Where the shipped Shapes-world artefacts live inside the package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
SHAPES_MODEL_DIR = ASSETS / "shapes"
DETECTOR_DIR = ASSETS / "shapes_detector"
TOKENIZER_DIR = SHAPES_MODEL_DIR / "tokenizer"


@lru_cache(maxsize=1)
def load_detector():
    from .detector import ShapesDetector

    if not (DETECTOR_DIR / "detector.safetensors").exists():
        raise FileNotFoundError(f"the Shapes detector is missing from {DETECTOR_DIR}; run scripts/train_world.sh")
    return ShapesDetector.load(DETECTOR_DIR)
