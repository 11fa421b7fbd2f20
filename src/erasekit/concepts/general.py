"""General prompts: what a model draws besides the concepts, for methods that must keep it.

Stable Diffusion models take the first COCO-30k captions (the field's general-prompt
set, bundled with the evaluation data); the Shapes world samples random captions
from its grammar, without the words being erased.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..models.loading import is_shapes_world

COCO_CAPTIONS = Path(__file__).resolve().parents[1] / "eval" / "data" / "coco_30k.csv"


def coco_captions(n: int) -> list[str]:
    """The first ``n`` COCO-30k captions, in file order."""
    reader = csv.DictReader(io.StringIO(COCO_CAPTIONS.read_text(encoding="utf-8").lstrip("\ufeff"), newline=""))
    rows = [row["prompt"] for row in reader]
    if n > len(rows):
        raise ValueError(f"COCO-30k has {len(rows)} prompts, asked for {n}")
    return rows[:n]


def general_prompts(pipe, n: int, exclude_words: list[str]) -> list[str]:
    """Prompts standing for 'everything else' the model draws (COCO for SD, random captions for Shapes)."""
    if is_shapes_world(pipe):
        from ..world.prompts import general_captions

        return general_captions(n, exclude_words=exclude_words)
    return coco_captions(n)
