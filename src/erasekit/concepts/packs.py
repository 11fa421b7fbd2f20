"""Built-in concept packs and name lookup.

Two packs ship with erasekit:

``shapes``
    Generated from the Shapes world's ``wording.json``: one concept per shape
    (kind ``object``), color (``attribute``) and style (``style``), plus the
    combination ``red-circle`` and the conditional ``circle-on-dark``.  Targets use
    ONLY the explicit and synonym tiers; the implicit tier is held out so that
    evaluations can test whether erasure generalises to paraphrases.  Anchors are
    each value's COUNTERPART of the same attribute (``SHAPES_COUNTERPARTS``:
    circle <-> square, red <-> green (complementary colours), solid <-> outlined,
    ...), the way Stable Diffusion packs map nudity to "a person wearing
    clothes".  A neutral word ("shape", or "" for colour/style) is the other
    option, chosen with ``erase --anchor``: every image of this world holds one
    of six shapes and six colours, so a neutral anchor draws the target at its
    chance rate (about 1/6), a floor no method goes under
    (``docs/experiments/anchors.md``).
    Preservation prompts are the explicit captions of the other values of the
    same attribute.  ``anchor_alternatives`` (used only when the counterpart is
    itself erased alongside, see `erasekit.concepts.joint`) are the other values
    of the attribute: for colours the farthest around the colour wheel first
    (red: yellow, blue, orange, purple), for shapes and styles in vocabulary order.

``sd``
    Stable Diffusion concepts from the YAML files in ``concepts/data``: nudity,
    the seven I2P categories, artists and the Imagenette objects.

Names are ``pack/concept`` ("shapes/circle", "sd/van-gogh"); a bare name
("circle") resolves when exactly one pack has it.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache, partial
from importlib import resources
from typing import Any

import yaml

from ..models.registry import Registry, UnknownNameError
from ..world.captions import Mention, caption, describe
from ..world.vocabulary import load_vocabulary
from .spec import ConceptSpec

# Each value's counterpart (an involution): shapes round <-> angular and in pairs, colours
# complementary on the colour wheel, styles filled <-> outline and pattern <-> pattern.
_PAIRS = [("circle", "square"), ("triangle", "star"), ("cross", "heart"),
          ("red", "green"), ("orange", "blue"), ("yellow", "purple"),
          ("solid", "outlined"), ("striped", "dotted")]
SHAPES_COUNTERPARTS = {**dict(_PAIRS), **{b: a for a, b in _PAIRS}}
SHAPES_KINDS = {"shape": "object", "color": "attribute", "style": "style"}
# Where the concept word sits inside the world's "{np}" noun phrase.
_NOUN_PHRASE = {"shape": "a {}", "color": "a {} shape", "style": "a {} shape"}
# The data-file packs: each pack's YAML files in ``concepts/data`` (their ``pack:`` key names it).
PACK_FILES = {"sd": ("sd_unsafe.yaml", "sd_artists.yaml", "sd_objects.yaml")}


class UnknownConceptError(UnknownNameError):
    """No concept (or pack) has this name, or a bare name is ambiguous; lists close matches."""


def normalize_name(name: str) -> str:
    """'SD/Van Gogh' -> 'sd/van-gogh'."""
    return re.sub(r"[\s_]+", "-", name.strip().lower())


# ------------------------------------------------------------------ Shapes pack
def _shapes_templates(attribute: str) -> list[str]:
    return [t.replace("{np}", _NOUN_PHRASE[attribute]) for t in load_vocabulary().templates]


def _named_words(attribute: str, value: str) -> list[str]:
    vocab = load_vocabulary()
    return vocab.words(attribute, value, "explicit") + vocab.words(attribute, value, "synonym")


def _explicit_captions(values: list[dict[str, str]]) -> list[str]:
    templates = load_vocabulary().templates
    return [describe(v, "explicit", t) for v in values for t in templates]


def _anchor_alternatives(attribute: str, value: str) -> list[str]:
    """The attribute's other values, counterpart excluded; colours farthest on the wheel first."""
    values = load_vocabulary().values(attribute)
    rest = [v for v in values if v not in (value, SHAPES_COUNTERPARTS[value])]
    if attribute != "color":
        return rest
    i, n = values.index(value), len(values)
    return sorted(rest, key=lambda v: -min((values.index(v) - i) % n, (i - values.index(v)) % n))


def _shapes_value_concept(attribute: str, value: str) -> ConceptSpec:
    others = [v for v in load_vocabulary().values(attribute) if v != value]
    return ConceptSpec(
        name=f"shapes/{value}",
        kind=SHAPES_KINDS[attribute],
        targets=_named_words(attribute, value),
        anchor=SHAPES_COUNTERPARTS[value],
        anchor_alternatives=_anchor_alternatives(attribute, value),
        templates=_shapes_templates(attribute),
        preserve=_explicit_captions([{attribute: v} for v in others]),
        article_agreement=True,
        description=f"Shapes world {attribute} '{value}' (explicit + synonym wording only).",
    )


def _shapes_red_circle() -> ConceptSpec:
    vocab = load_vocabulary()
    targets = [f"{c} {s}" for c in _named_words("color", "red") for s in _named_words("shape", "circle")]
    retain = _explicit_captions(
        [{"color": "red", "shape": s} for s in vocab.values("shape") if s != "circle"]
        + [{"color": c, "shape": "circle"} for c in vocab.values("color") if c != "red"]
    )
    return ConceptSpec(
        name="shapes/red-circle", kind="object", targets=targets,
        anchor=f"{SHAPES_COUNTERPARTS['red']} {SHAPES_COUNTERPARTS['circle']}",
        templates=_shapes_templates("shape"), preserve=retain, retain=retain,
        combination=["red", "circle"], article_agreement=True,
        description="Combination: erase red circles, keep red other shapes and circles of other colors.",
    )


def _shapes_circle_on_dark() -> ConceptSpec:
    vocab = load_vocabulary()
    targets = [f"{s} {b}" for s in _named_words("shape", "circle") for b in _named_words("background", "dark")]
    retain = _explicit_captions(
        [{"shape": "circle"}]
        + [{"shape": "circle", "background": b} for b in vocab.values("background") if b != "dark"]
        + [{"shape": s, "background": "dark"} for s in vocab.values("shape") if s != "circle"]
    )
    dark = vocab.words("background", "dark", "explicit")[0]
    return ConceptSpec(
        name="shapes/circle-on-dark", kind="object", targets=targets, anchor=f"{SHAPES_COUNTERPARTS['circle']} {dark}",
        templates=_shapes_templates("shape"), preserve=retain, retain=retain,
        condition={"concept": "circle", "context": dark}, article_agreement=True,
        description="Conditional: erase circles only on a dark background.",
    )


@lru_cache(maxsize=1)
def _shapes_pack() -> dict[str, ConceptSpec]:
    vocab = load_vocabulary()
    specs = [_shapes_value_concept(a, v) for a in SHAPES_KINDS for v in vocab.values(a)]
    specs += [_shapes_red_circle(), _shapes_circle_on_dark()]
    return {s.name: s for s in specs}


# A Shapes value named beside a value of this second attribute, as the world's captions pair them.
_CONTEXT_ATTRIBUTE = {"shape": "color", "color": "shape", "style": "shape"}


def in_context_prompts(spec: ConceptSpec, words: list[str] | None = None) -> list[str] | None:
    """Prompts that name a Shapes concept's own words beside each value of a second attribute.

    A value concept's prompts name only its attribute ("a red shape"); here each of its target
    words (or ``words``, in their place and order) is put beside each value of the attribute
    captions pair it with (shapes for a colour or a style, colours for a shape), in every
    template: "a crimson star", "clip art of a red circle"; the order is word, value, template.
    A combination or a conditional concept already names two attributes: its target prompts.
    Any other concept (free text, another world's) has no such set: None.
    """
    if spec.combination is not None or spec.condition is not None:
        return None if words is not None else spec.target_prompts()
    vocab = load_vocabulary()
    value = spec.name.partition("/")[2]
    if not spec.name.startswith("shapes/") or value not in vocab.all_values:
        return None
    attribute = vocab.attribute_of(value)
    other = _CONTEXT_ATTRIBUTE[attribute]
    return [caption({attribute: Mention(value, "explicit", word),
                     other: Mention(v, "explicit", vocab.words(other, v, "explicit")[0])}, template)
            for word in (spec.targets if words is None else words) for v in vocab.values(other)
            for template in vocab.templates]


# ------------------------------------------------------------------ data-file packs
def _group_specs(pack: str, group: dict[str, Any]) -> list[ConceptSpec]:
    defaults = group.get("defaults", {})
    raw = [{**defaults, **c, "name": f"{pack}/{c['name']}"} for c in group["concepts"]]
    specs = [ConceptSpec.from_dict(d) for d in raw]
    n_sib = int(group.get("preserve_siblings", 0))
    if n_sib:  # each concept also preserves the canonical target of its siblings
        out = []
        for spec in specs:
            extra = [spec.fill(t, o.canonical) for o in specs if o is not spec for t in spec.templates[:n_sib]]
            out.append(spec.model_copy(update={"preserve": list(spec.preserve) + extra}))
        specs = out
    return specs


def _file_pack(pack: str) -> dict[str, ConceptSpec]:
    specs: dict[str, ConceptSpec] = {}
    root = resources.files("erasekit.concepts").joinpath("data")
    for filename in PACK_FILES[pack]:
        data = yaml.safe_load(root.joinpath(filename).read_text(encoding="utf-8"))
        if data["pack"] != pack:
            raise ValueError(f"concepts/data/{filename} belongs to pack {data['pack']!r}, listed under {pack!r}")
        for group in data["groups"]:
            specs.update({spec.name: spec for spec in _group_specs(pack, group)})
    return specs


# pack name -> its concepts by qualified name, built on first use
PACKS: Registry[dict[str, ConceptSpec]] = Registry("pack", UnknownConceptError)
PACKS.lazy("shapes", _shapes_pack)
for _pack in PACK_FILES:
    PACKS.lazy(_pack, partial(_file_pack, _pack))


def _all_packs() -> dict[str, dict[str, ConceptSpec]]:
    return {name: PACKS.get(name) for name in PACKS.names()}


# ------------------------------------------------------------------ public API
def list_packs() -> list[str]:
    """Names of the built-in packs, e.g. ['sd', 'shapes']."""
    return PACKS.names()


def list_concepts(pack: str | None = None) -> list[str]:
    """Qualified concept names ('shapes/circle', ...), of one pack or of all."""
    chosen = [PACKS.get(pack)] if pack is not None else _all_packs().values()
    return sorted(name for p in chosen for name in p)


def get_concept(name: str, world: str | None = None) -> ConceptSpec:
    """Look up a built-in concept by 'pack/name', or a bare name within ``world`` or unambiguously."""
    key = normalize_name(name)
    every = {n: s for p in _all_packs().values() for n, s in p.items()}
    if "/" not in key:
        if world is not None:
            key = f"{normalize_name(world)}/{key}"
        else:
            hits = [n for n in every if n.split("/", 1)[1] == key]
            if len(hits) > 1:
                raise UnknownConceptError(f"concept name {name!r} is ambiguous; use one of: {', '.join(sorted(hits))}")
            key = hits[0] if hits else key
    if key in every:
        return every[key].model_copy(deep=True)
    pool = list(every) + [n.split("/", 1)[1] for n in every]
    close = difflib.get_close_matches(key, pool, n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else f"; see list_concepts() ({len(every)} concepts)"
    raise UnknownConceptError(f"unknown concept {name!r}{hint}")
