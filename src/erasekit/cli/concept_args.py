"""The concepts an ``erase`` command names: ``--concept`` (pack names, files) and ``--target`` (free text)."""

from __future__ import annotations

import time
from typing import Optional

from .common import fail, load_concept
from .free_text import free_text_concept, with_general_preserve


def _one_line(err: Exception) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _free_text(targets, synonym, preserve, kind, anchor, world):
    from ..concepts.spec import ConceptSpecError

    try:
        return [free_text_concept(t, synonym, anchor, preserve, kind, world) for t in targets]
    except ConceptSpecError as err:
        fail(_one_line(err))


def concepts_from_args(concept: Optional[list[str]], target: Optional[list[str]], synonym: Optional[list[str]],
                       preserve: Optional[list[str]], kind: Optional[str], anchor: Optional[str], world: str):
    """The specs of every ``--concept`` then every ``--target``; argument mistakes fail with one line."""
    concept, target = concept or [], target or []
    if not concept and not target:
        fail("name a concept: --concept NAME (see `erasekit concepts`) or --target 'your phrase'")
    if not target and (synonym or preserve or kind):
        fail("--synonym, --preserve and --kind describe a --target concept; give --target")
    if synonym and len(target) != 1:
        fail("--synonym needs exactly one --target (give several wordings of one concept in a YAML file)")
    return [load_concept(c) for c in concept] + _free_text(target, synonym, preserve, kind, anchor, world)


def free_text_for_model(specs, concept, target, synonym, preserve, kind, anchor, world, pipe):
    """``specs`` with the ``--target`` ones rebuilt for the loaded model's world, with its general prompts preserved."""
    named = specs[: len(concept or [])]
    return named + [with_general_preserve(s, pipe) for s in _free_text(target, synonym, preserve, kind, anchor, world)]


def separate_or_fail(specs):
    """Several concepts: anchors moved off the others' targets (`erasekit.concepts.joint`)."""
    if len(specs) < 2:
        return specs
    from ..concepts.joint import AnchorCollisionError, separate_anchors

    try:
        return separate_anchors(specs)
    except AnchorCollisionError as err:
        fail(str(err))


def erase_in_sequence(pipe, info, specs, cfg):
    """One delta erasing ``specs`` one after the other (each on the model carrying the previous ones)."""
    from ..eval.bench.erasing import compose_sequential

    t0 = time.perf_counter()
    delta, _ = compose_sequential(pipe, lambda c: info.erase(pipe, c, cfg), specs, info.name)
    delta.manifest.wall_time_s = time.perf_counter() - t0
    return delta
