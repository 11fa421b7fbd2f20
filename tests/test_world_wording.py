import re

import numpy as np

from erasekit.world.captions import describe, random_caption
from erasekit.world.vocabulary import ATTRIBUTES, TIERS, load_vocabulary


def _words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def _stems(text):
    return {w[:5] for w in _words(text) if len(w) >= 4}


GENERIC = {"shape", "background", "backdrop", "color", "with", "like", "the", "on", "a", "an", "sign", "symbol"}


def test_every_value_has_three_nonempty_tiers():
    vocab = load_vocabulary()
    for attribute in ATTRIBUTES:
        for value in vocab.values(attribute):
            for tier in TIERS:
                assert vocab.words(attribute, value, tier), (attribute, value, tier)
            assert vocab.words(attribute, value, "explicit")[0].find(value) >= 0


# Known stem overlap in the shipped world: "crossing" (implicit, cross) shares a stem with
# "cross". They are distinct CLIP tokens ("crossing</w>" vs "cross</w>"), so no token of the
# implicit phrase names the value; replace the phrase when the world is next retrained.
KNOWN_STEM_OVERLAPS = {("cross", "shape of two crossing bars")}


def test_implicit_tier_never_names_the_value_or_a_synonym():
    vocab = load_vocabulary()
    for attribute in ATTRIBUTES:
        for value in vocab.values(attribute):
            named = set()
            for w in vocab.words(attribute, value, "explicit") + vocab.words(attribute, value, "synonym"):
                named |= _stems(w)
            named -= {g[:5] for g in GENERIC}
            words = {w for p in vocab.words(attribute, value, "explicit") + vocab.words(attribute, value, "synonym")
                     for w in _words(p)} - GENERIC
            for phrase in vocab.words(attribute, value, "implicit"):
                assert not (_words(phrase) & words), (value, phrase)  # never the same word
                if (value, phrase) not in KNOWN_STEM_OVERLAPS:
                    assert not (_stems(phrase) & named), (value, phrase, _stems(phrase) & named)


def test_implicit_phrases_never_name_any_other_value():
    vocab = load_vocabulary()
    canon = {v for a in ATTRIBUTES for v in vocab.values(a) if a != "background"}
    for attribute in ATTRIBUTES:
        for value in vocab.values(attribute):
            for phrase in vocab.words(attribute, value, "implicit"):
                assert not (_words(phrase) & canon), (phrase, _words(phrase) & canon)


def test_captions_are_deterministic_and_use_the_tier():
    assert describe({"shape": "circle", "color": "red"}) == "a red circle"
    implicit = describe({"shape": "circle", "color": "red"}, tier="implicit")
    assert "red" not in implicit and "circle" not in implicit
    a = [random_caption({"shape": "star", "color": "blue", "style": "dotted", "background": "dark"},
                        np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
