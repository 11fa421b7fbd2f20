"""Caption grammar of the Shapes world.

A caption is a template wrapped around a noun phrase built from the scene's
attributes.  Each mentioned attribute is worded in one of three tiers:
explicit ("red"), synonym ("crimson") or implicit ("the color of a ripe
strawberry").  Explicit and synonym colors/styles are adjectives before the
noun; implicit ones are phrases after it.  Backgrounds are always phrases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vocabulary import TIERS, load_vocabulary

# Probability that an attribute is mentioned at all in a training caption.
MENTION_P = {"shape": 0.9, "color": 0.9, "style": 0.6, "background": 0.5}
# Training mix of wording tiers.
TIER_P = {"explicit": 0.45, "synonym": 0.3, "implicit": 0.25}


@dataclass(frozen=True)
class Mention:
    value: str
    tier: str
    phrase: str


def noun_phrase(mentions: dict[str, Mention]) -> str:
    """Assemble "a [color] [style] shape [color phrase] [style phrase] [background]"."""
    pre, post = [], []
    for attribute in ("color", "style"):
        m = mentions.get(attribute)
        if m is None:
            continue
        (post if m.tier == "implicit" else pre).append(m.phrase)
    shape = mentions.get("shape")
    noun = shape.phrase if shape is not None else "shape"
    words = " ".join(pre + [noun])
    post_texts = []
    for p in post:
        post_texts.append(p if not p.startswith("the color") else "in " + p)
    if "background" in mentions:
        post_texts.append(mentions["background"].phrase)
    article = "an" if words[0] in "aeiou" else "a"
    return " ".join([article, words] + post_texts)


def caption(mentions: dict[str, Mention], template: str = "{np}") -> str:
    return template.format(np=noun_phrase(mentions))


def describe(values: dict[str, str], tier: str = "explicit", template: str = "{np}", choice: int = 0) -> str:
    """Deterministic caption for the given attribute values at one wording tier.

    ``choice`` picks which word of the tier (cycled), so evaluation prompts are
    reproducible.
    """
    vocab = load_vocabulary()
    mentions = {}
    for attribute, value in values.items():
        words = vocab.words(attribute, value, tier)
        mentions[attribute] = Mention(value, tier, words[choice % len(words)])
    return caption(mentions, template)


def random_caption(attributes: dict[str, str], rng: np.random.Generator) -> str:
    """A training caption for a scene: random subset of attributes, tiers and template."""
    return random_caption_with_mentions(attributes, rng)[0]


def random_caption_with_mentions(attributes: dict[str, str], rng: np.random.Generator) -> tuple[str, set[str]]:
    """``random_caption`` and the set of attributes it mentions (same draws from ``rng``)."""
    vocab = load_vocabulary()
    mentions = {}
    for attribute, value in attributes.items():
        if rng.random() >= MENTION_P[attribute]:
            continue
        tier = TIERS[rng.choice(len(TIERS), p=[TIER_P[t] for t in TIERS])]
        words = vocab.words(attribute, value, tier)
        mentions[attribute] = Mention(value, tier, words[rng.integers(len(words))])
    template = vocab.templates[rng.integers(len(vocab.templates))]
    return caption(mentions, template), set(mentions)
