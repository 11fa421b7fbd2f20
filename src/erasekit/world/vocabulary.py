"""The Shapes world's attributes, values and their three tiers of wording (as data)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

ATTRIBUTES = ("shape", "color", "style", "background")
TIERS = ("explicit", "synonym", "implicit")


@dataclass(frozen=True)
class Vocabulary:
    """Wording tiers per attribute value plus the caption templates."""

    wording: dict[str, dict[str, dict[str, list[str]]]]
    templates: list[str]

    def values(self, attribute: str) -> list[str]:
        return list(self.wording[attribute])

    def words(self, attribute: str, value: str, tier: str) -> list[str]:
        return list(self.wording[attribute][value][tier])

    def attribute_of(self, value: str) -> str:
        """The attribute a value belongs to ('circle' -> 'shape')."""
        for attribute in ATTRIBUTES:
            if value in self.wording[attribute]:
                return attribute
        raise KeyError(value)

    @property
    def all_values(self) -> list[str]:
        return [v for a in ATTRIBUTES for v in self.wording[a]]


@lru_cache(maxsize=1)
def load_vocabulary() -> Vocabulary:
    text = resources.files("erasekit.world").joinpath("data/wording.json").read_text()
    data = json.loads(text)
    return Vocabulary(wording={a: data[a] for a in ATTRIBUTES}, templates=data["templates"])


SHAPES = tuple(load_vocabulary().values("shape"))
COLORS = tuple(load_vocabulary().values("color"))
STYLES = tuple(load_vocabulary().values("style"))
BACKGROUNDS = tuple(load_vocabulary().values("background"))
VALUES = {"shape": SHAPES, "color": COLORS, "style": STYLES, "background": BACKGROUNDS}
