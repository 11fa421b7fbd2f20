"""Anchors for concepts erased together: no concept may be steered onto another that is erased with it.

Each concept maps its targets onto an anchor (its safe counterpart).  When
several concepts are erased at once, or one after another on the same model,
one concept's anchor can be another's target: the Shapes pack's counterpart
anchors send red to green and green to red, so erasing red, green and blue
teaches the model to draw "red" as green while also removing green
(measurements: ``docs/experiments/anchors.md``).

`separate_anchors` replaces every anchor (and per-target anchor) that names
a target of a concept in the set by the first of the concept's
``anchor_alternatives`` that names none; a concept with no free alternative is
an `AnchorCollisionError` that says which concepts collide, never a silent
keep.  `erased_concepts` reads the concepts a saved delta already erased from
its manifest, so ``erasekit erase --from`` can do the same one step at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .spec import ConceptSpec


class AnchorCollisionError(ValueError):
    """A concept's anchor names a concept erased with it and no alternative anchor is free."""


def colliding(text: str, others: Sequence[ConceptSpec]) -> list[str]:
    """Names of the concepts in ``others`` that ``text`` names one of the targets of."""
    return [o.name for o in others if text and o.names_target(text)]


def separate_anchors(concepts: Sequence[ConceptSpec], already_erased: Sequence[ConceptSpec] = ()) -> list[ConceptSpec]:
    """``concepts`` with each anchor moved off every target erased alongside it (see the module docstring).

    ``already_erased``: concepts a delta applied earlier removed; anchors must
    avoid them too, but they are not returned.  Specs without a collision are
    returned unchanged (the same objects).
    """
    erased = [*already_erased, *concepts]
    out = []
    for spec in concepts:
        others = [o for o in erased if o is not spec]
        free = [a for a in spec.anchor_alternatives if not colliding(a, erased)]

        def replacement(anchor: str, label: str) -> str:
            hits = colliding(anchor, others)
            if not hits:
                return anchor
            if not free:
                raise AnchorCollisionError(
                    f"{spec.name}'s {label} {anchor!r} names {', '.join(hits)}, which is erased with it, and none of "
                    f"its anchor_alternatives {spec.anchor_alternatives} is free; give an anchor outside the erased "
                    "concepts (erase --anchor, or anchor_alternatives in the concept file)")
            return free[0]

        anchor = replacement(spec.anchor, "anchor")
        targets = {t: replacement(a, f"anchor for {t!r}") for t, a in spec.target_anchors.items()}
        if anchor == spec.anchor and targets == spec.target_anchors:
            out.append(spec)
        else:
            out.append(spec.model_copy(update={"anchor": anchor, "target_anchors": targets}))
    return out


def erased_concepts(config: Mapping[str, Any]) -> list[ConceptSpec]:
    """The concepts a delta's manifest config says it erased (one run, or a sequential composition)."""
    found = []
    if isinstance(config.get("concept"), Mapping):
        found.append(ConceptSpec.from_dict(dict(config["concept"])))
    for step in config.get("sequential") or []:
        if isinstance(step, Mapping):
            found.extend(erased_concepts(step))
    return found
