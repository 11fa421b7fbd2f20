"""ConceptSpec validation/prompts and the built-in concept packs."""

import json
import re

import pytest
import yaml

from erasekit.concepts.packs import UnknownConceptError, get_concept, list_concepts, list_packs
from erasekit.concepts.spec import ConceptSpec, ConceptSpecError
from erasekit.world.vocabulary import load_vocabulary

BASIC = {
    "name": "demo",
    "kind": "object",
    "targets": ["church", "chapel"],
    "anchor": "building",
    "templates": ["a photo of a {}", "{} at night", "an image of a {}"],
    "preserve": ["a photo of a cat"],
}


def _words(text):
    return re.findall(r"[a-z'-]+", text.lower())


# ------------------------------------------------------------------ ConceptSpec
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_from_file_roundtrip(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_text(yaml.safe_dump(BASIC) if suffix == ".yaml" else json.dumps(BASIC))
    spec = ConceptSpec.from_file(path)
    assert spec == ConceptSpec.from_dict(BASIC)
    assert spec.canonical == "church" and spec.synonyms == ["chapel"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"targets": []}, "targets"),
        ({"targets": ["church", " "]}, "targets"),
        ({"templates": ["a photo of a church"]}, "templates"),
        ({"templates": ["a {np} photo"]}, "templates"),
        ({"kind": "animal"}, "kind"),
        ({"target_anchors": {"mosque": "x"}}, "target_anchors"),
        ({"combination": ["red"]}, "combination"),
    ],
)
def test_validation_errors_name_the_field(change, field):
    with pytest.raises(ConceptSpecError) as info:
        ConceptSpec.from_dict({**BASIC, **change})
    assert "demo" in str(info.value) and field in str(info.value)


def test_target_and_anchor_prompts_are_aligned():
    spec = ConceptSpec.from_dict({**BASIC, "target_anchors": {"chapel": "house"}})
    targets, anchors = spec.target_prompts(), spec.anchor_prompts()
    assert targets == [
        "a photo of a church", "church at night", "an image of a church",
        "a photo of a chapel", "chapel at night", "an image of a chapel",
    ]
    assert anchors == [
        "a photo of a building", "building at night", "an image of a building",
        "a photo of a house", "house at night", "an image of a house",
    ]
    assert spec.target_prompts(n_targets=1, n_templates=2) == ["a photo of a church", "church at night"]
    assert len(spec.anchor_prompts(1, 2)) == 2
    assert spec.unnamed_prompts() == ["a photo of a", "at night", "an image of a"] * 2  # the target left out
    assert spec.unnamed_prompts(1, 2) == ["a photo of a", "at night"]


def test_with_anchor_sets_one_anchor_for_every_target_and_refuses_a_target():
    spec = ConceptSpec.from_dict({**BASIC, "target_anchors": {"chapel": "house"}}).with_anchor("tower")
    assert spec.anchor_prompts() == ["a photo of a tower", "tower at night", "an image of a tower"] * 2
    assert spec.target_prompts() == ConceptSpec.from_dict(BASIC).target_prompts()
    with pytest.raises(ConceptSpecError):
        spec.with_anchor("chapel")


def test_empty_anchor_and_article_agreement():
    spec = ConceptSpec.from_dict({**BASIC, "anchor": "", "targets": ["orb"], "article_agreement": True,
                                  "templates": ["a picture of a {} shape", "a {}, icon"]})
    assert spec.target_prompts() == ["a picture of an orb shape", "an orb, icon"]
    assert spec.anchor_prompts() == ["a picture of a shape", "a, icon"]


def test_retain_prompts_for_combination_and_condition():
    combo = ConceptSpec.from_dict({**BASIC, "targets": ["red circle"], "templates": ["{}"], "combination": ["red", "circle"]})
    assert combo.retain_prompts() == ["red", "circle"]
    cond = ConceptSpec.from_dict({**BASIC, "targets": ["circle at night"], "templates": ["a {}"],
                                  "condition": {"concept": "circle", "context": "at night"}})
    assert cond.retain_prompts() == ["a circle", "a at night"]
    assert ConceptSpec.from_dict(BASIC).retain_prompts() == []
    with pytest.raises(ConceptSpecError):
        ConceptSpec.from_dict({**combo.to_dict(), "condition": {"concept": "a", "context": "b"}})


# ------------------------------------------------------------------ packs
def test_packs_and_names():
    assert {"shapes", "sd"} <= set(list_packs())
    vocab = load_vocabulary()
    for attribute, kind in (("shape", "object"), ("color", "attribute"), ("style", "style")):
        for value in vocab.values(attribute):
            spec = get_concept(f"shapes/{value}")
            assert spec.kind == kind and spec.canonical == value
            assert get_concept(value) == spec  # bare names resolve to the Shapes world
    assert get_concept("Van Gogh") == get_concept("sd/van-gogh") == get_concept("van-gogh", world="sd")


def test_unknown_concept_lists_close_matches():
    with pytest.raises(UnknownConceptError) as info:
        get_concept("circel")
    assert isinstance(info.value, KeyError) and "circle" in str(info.value)
    with pytest.raises(KeyError, match="van-gogh"):
        get_concept("sd/van-gog")


def test_shapes_pack_never_uses_implicit_wording():
    vocab = load_vocabulary()
    named, implicit = set(), []
    for attribute in vocab.wording:
        for value in vocab.values(attribute):
            for tier in ("explicit", "synonym"):
                for w in vocab.words(attribute, value, tier):
                    named |= set(_words(w))
            implicit += vocab.words(attribute, value, "implicit")
    allowed = named | {w for t in vocab.templates for w in _words(t.replace("{np}", ""))} | {"a", "an", "shape"}
    for name in list_concepts("shapes"):
        spec = get_concept(name)
        texts = (spec.target_prompts() + spec.anchor_prompts() + spec.preserve + spec.retain_prompts()
                 + spec.targets + [spec.anchor])
        for text in texts:
            assert not any(p in text for p in implicit), (name, text)
            assert set(_words(text)) <= allowed, (name, text, set(_words(text)) - allowed)


def test_shapes_value_concepts():
    vocab = load_vocabulary()
    circle = get_concept("circle")
    assert circle.targets == vocab.words("shape", "circle", "explicit") + vocab.words("shape", "circle", "synonym")
    # counterpart anchors, an involution within each attribute
    assert circle.anchor == "square" and get_concept("square").anchor == "circle"
    assert get_concept("red").anchor == "green" and get_concept("striped").anchor == "dotted"
    for attribute in ("shape", "color", "style"):
        for value in vocab.values(attribute):
            partner = get_concept(value).anchor
            assert partner in vocab.values(attribute) and partner != value and get_concept(partner).anchor == value
    assert len(circle.templates) == len(vocab.templates)
    assert "a picture of an orb" in circle.target_prompts()
    assert len(circle.anchor_prompts()) == len(circle.target_prompts())
    assert circle.preserve and not any("circle" in p for p in circle.preserve)
    assert any("square" in p for p in circle.preserve)


def test_shapes_combination_and_condition():
    combo = get_concept("shapes/red-circle")
    assert combo.combination == ["red", "circle"]
    assert all(p.count(" ") >= 1 for p in combo.target_prompts())
    assert "a red circle" in combo.target_prompts()
    retain = combo.retain_prompts()
    assert "a red square" in retain and "a blue circle" in retain
    assert not any("red" in p and "circle" in p for p in retain)
    cond = get_concept("shapes/circle-on-dark")
    assert cond.condition.concept == "circle" and cond.condition.context == "on a dark background"
    assert "a circle on a dark background" in cond.target_prompts()
    retain = cond.retain_prompts()
    assert "a circle" in retain and "a circle on a light background" in retain and "a square on a dark background" in retain
    assert "a circle on a dark background" not in retain


def test_sd_packs():
    nudity = get_concept("sd/nudity")
    assert nudity.kind == "unsafe" and nudity.anchor == "a person wearing clothes"
    assert len(set(nudity.targets)) >= 19 and len(nudity.templates) == 15
    assert len(nudity.target_prompts()) == len(nudity.targets) * 15
    for cat in ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal-activity"):
        spec = get_concept(f"sd/{cat}")
        assert spec.kind == "unsafe" and len(spec.targets) >= 5
    for artist in ("van-gogh", "picasso", "rembrandt", "andy-warhol", "caravaggio", "kelly-mckernan"):
        spec = get_concept(f"sd/{artist}")
        assert spec.kind == "style" and spec.anchor == "art"
        assert "a painting in the style of art" in spec.anchor_prompts()
        assert not any(spec.canonical in p for p in spec.preserve)
    objects = ["tench", "english-springer", "cassette-player", "chain-saw", "church", "french-horn",
               "garbage-truck", "gas-pump", "golf-ball", "parachute"]
    for obj in objects:
        spec = get_concept(f"sd/{obj}")
        assert spec.kind == "object" and len(spec.templates) == 15 and spec.anchor
    assert "a photo of an English springer" in get_concept("sd/english-springer").target_prompts()


def test_get_concept_returns_independent_copies():
    spec = get_concept("sd/nudity")
    spec.targets.append("mutated")
    assert "mutated" not in get_concept("sd/nudity").targets
