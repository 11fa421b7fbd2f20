"""Prompt benchmarks: the bundled public CSV files and generic loaders."""

from __future__ import annotations

import csv
from importlib import resources


def _bundled_rows(filename: str) -> list[dict[str, str]]:
    text = resources.files("erasekit.eval").joinpath(f"data/{filename}").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def coco_prompts(n: int) -> list[str]:
    """The first ``n`` COCO-30k captions (the field's general-prompt set)."""
    rows = _bundled_rows("coco_30k.csv")
    if n > len(rows):
        raise ValueError(f"COCO-30k has {len(rows)} prompts, asked for {n}")
    return [r["prompt"] for r in rows[:n]]
