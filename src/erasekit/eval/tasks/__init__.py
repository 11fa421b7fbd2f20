"""Shapes-world tasks: the scenarios of the benchmark, one YAML file each, and the per-value task.

A task names the Shapes-pack concepts a method erases (several = a
multi-concept erasure, done one after the other), the attribute values whose
joint presence in an image counts as "the target is still there", a
``partner`` attribute named explicitly (cycled) next to the target so images
differ, the preservation value sets whose adherence must survive, and the
attributes (``checked``) an image must show as named to adhere.

``tasks/shapes/<key>.yaml`` holds one scenario; adding a scenario is adding a
file.  `load_tasks` reads them all into `ShapesTask` models (ordered by
``order``); a file that does not validate raises `TaskError` with one line
naming the file and the field.  `value_task` builds the task of one Shapes
value (``erasekit eval --benchmark shapes --concept circle``, the erasure
measurements of `erasekit.eval.measure`): its preservation prompts name a
shape and a color other than the value, and its template advances once per
cycle of the partner's values (``template_advance: partner-cycle``) instead
of once per round.  The prompts themselves come from `erasekit.eval.probes`.
"""

from __future__ import annotations

import difflib
import itertools
from functools import lru_cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ...world.vocabulary import VALUES, load_vocabulary

# the partner attribute named next to a single value's target (per-value tasks)
VALUE_PARTNER = {"shape": "color", "color": "shape", "style": "shape", "background": "shape"}
# the fields a scenario's cell fingerprint covers (`ShapesTask.as_dict`)
FINGERPRINTED = ("key", "title", "concepts", "targets", "partner", "preserve", "checked", "description", "extra")


class TaskError(ValueError):
    """A task file that does not validate, or an unknown task name; one line."""


def _check_values(sets: tuple[dict[str, str], ...], what: str) -> None:
    for values in sets:
        for attribute, value in values.items():
            if attribute not in VALUES:
                raise ValueError(f"{what}: unknown attribute {attribute!r} (attributes: {', '.join(VALUES)})")
            if value not in VALUES[attribute]:
                raise ValueError(f"{what}: {value!r} is not a {attribute} ({', '.join(VALUES[attribute])})")


class ShapesTask(BaseModel):
    """One Shapes task: what is erased, what counts as the target, what must be preserved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    title: str
    concepts: tuple[str, ...]
    targets: tuple[dict[str, str], ...]
    partner: str | None
    preserve: tuple[dict[str, str], ...]
    checked: tuple[str, ...]
    description: str = ""
    extra: dict = {}
    order: int = 0
    template_advance: Literal["round", "partner-cycle"] = "round"

    @field_validator("partner")
    @classmethod
    def _partner(cls, value: str | None) -> str | None:
        if value is not None and value not in VALUES:
            raise ValueError(f"unknown attribute {value!r} (attributes: {', '.join(VALUES)})")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ShapesTask":
        if not self.concepts or len(self.concepts) != len(self.targets):
            raise ValueError(f"{len(self.concepts)} concepts but {len(self.targets)} targets (one target per concept)")
        if not self.preserve:
            raise ValueError("preserve: at least one value set")
        _check_values(self.targets, "targets")
        _check_values(self.preserve, "preserve")
        unknown = [a for a in self.checked if a not in VALUES]
        if unknown or not self.checked:
            raise ValueError(f"checked: attributes among {', '.join(VALUES)} (got {list(self.checked)})")
        unnamed = [a for a in self.checked for s in self.preserve if a not in s and a != self.partner]
        if unnamed:
            raise ValueError(f"checked: preservation sets must name {unnamed[0]!r}")
        return self

    @property
    def multi(self) -> bool:
        return len(self.concepts) > 1

    def as_dict(self) -> dict:
        """The scenario's fields that its benchmark cells' fingerprints cover."""
        return {name: getattr(self, name) for name in FINGERPRINTED}

    def specs(self) -> list:
        """The Shapes-pack concept specs, anchors moved off each other's targets when several are erased.

        See `erasekit.concepts.joint`: in ``multi`` red's and green's counterpart
        anchors (green, red) are erased too, so they become yellow and orange.
        """
        from ...concepts.joint import separate_anchors
        from ...concepts.packs import get_concept

        return separate_anchors([get_concept(name, world="shapes") for name in self.concepts])


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "file"
    return f"{where}: {first.get('msg', 'invalid')}".replace("Value error, ", "")


def parse_task(text: str, source: str) -> ShapesTask:
    """A `ShapesTask` from YAML text; `TaskError` (one line naming ``source``) when it does not validate."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TaskError(f"{source}: not YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise TaskError(f"{source}: a task file is a mapping of fields (key, title, concepts, targets, ...)")
    try:
        return ShapesTask.model_validate(data)
    except ValidationError as err:
        raise TaskError(f"{source}: {_one_line(err)}") from None


def task_files() -> list:
    """The bundled task files (``erasekit/eval/tasks/shapes/*.yaml``), by name."""
    folder = resources.files(__name__).joinpath("shapes")
    return sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)


@lru_cache(maxsize=1)
def _bundled() -> dict[str, ShapesTask]:
    tasks: dict[str, ShapesTask] = {}
    for f in task_files():
        task = parse_task(f.read_text(encoding="utf-8"), f"erasekit/eval/tasks/shapes/{f.name}")
        if task.key != f.name.removesuffix(".yaml"):
            raise TaskError(f"erasekit/eval/tasks/shapes/{f.name}: key {task.key!r} differs from the file name")
        tasks[task.key] = task
    return {t.key: t for t in sorted(tasks.values(), key=lambda t: (t.order, t.key))}


def load_tasks() -> dict[str, ShapesTask]:
    """Every bundled scenario by key, in table order."""
    return dict(_bundled())


def task_keys() -> list[str]:
    return list(_bundled())


def get_task(key: str) -> ShapesTask:
    """The bundled scenario ``key``; `TaskError` listing the scenarios otherwise."""
    tasks = _bundled()
    if key not in tasks:
        close = difflib.get_close_matches(key, list(tasks), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TaskError(f"unknown scenario {key!r}{hint}; scenarios: {', '.join(tasks)}")
    return tasks[key]


def check_value(concept: str | None) -> str:
    """The concept as a Shapes-world value, or a one-line `TaskError` listing the values."""
    vocab = load_vocabulary()
    if concept is None or concept not in vocab.all_values:
        raise TaskError(f"the shapes benchmark needs --concept, one of: {', '.join(vocab.all_values)}"
                        + (f" (got {concept!r})" if concept else ""))
    return concept


def value_task(value: str) -> ShapesTask:
    """The task of one Shapes value: its attribute's partner, shape-and-color preservation without it."""
    attribute = load_vocabulary().attribute_of(check_value(value))
    pairs = [{"shape": s, "color": c} for s, c in itertools.product(VALUES["shape"], VALUES["color"])
             if value not in (s, c)]
    return ShapesTask(key=f"value:{value}", title=value, concepts=(value,), targets=({attribute: value},),
                      partner=VALUE_PARTNER[attribute], preserve=tuple(pairs), checked=("shape", "color"),
                      description=f"one {attribute} value; preservation: shapes and colors other than {value}",
                      template_advance="partner-cycle")
