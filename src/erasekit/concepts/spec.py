"""`ConceptSpec`: the description of one concept to erase (see spec/methods.md).

A concept is a list of target words or phrases (the first is canonical, the rest
are synonyms), a safe anchor, prompt templates with a ``{}`` slot, and the
prompts whose behaviour must be preserved.  It can also describe a
*combination* ("erase A and B together, keep each alone") or a *conditional*
concept ("erase A only in context B").  Specs load from YAML or JSON files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Kind = Literal["object", "style", "unsafe", "instance", "attribute"]

_VOWEL_AFTER_A = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_SPACES = re.compile(r"\s+")


class ConceptSpecError(ValueError):
    """A concept file or dict is invalid; the message says which field and why."""


class Condition(BaseModel):
    """Erase ``concept`` only when it appears in ``context``."""

    model_config = ConfigDict(extra="forbid")
    concept: str = Field(min_length=1)
    context: str = Field(min_length=1)


class ConceptSpec(BaseModel):
    """One concept to erase, with the prompts every method derives from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: Kind
    targets: list[str]
    anchor: str = ""
    target_anchors: dict[str, str] = Field(default_factory=dict)
    anchor_alternatives: list[str] = Field(default_factory=list)
    templates: list[str] = Field(default_factory=lambda: ["{}"])
    preserve: list[str] = Field(default_factory=list)
    preserve_cache: str | None = None
    combination: list[str] | None = None
    condition: Condition | None = None
    retain: list[str] | None = None
    article_agreement: bool = False
    description: str = ""

    # ----------------------------------------------------------------- validation
    @field_validator("targets")
    @classmethod
    def _targets_nonempty(cls, targets: list[str]) -> list[str]:
        cleaned = [t.strip() for t in targets]
        if not cleaned or any(not t for t in cleaned):
            raise ValueError("targets must be a non-empty list of non-empty words or phrases")
        if len(set(cleaned)) != len(cleaned):
            dupes = sorted({t for t in cleaned if cleaned.count(t) > 1})
            raise ValueError(f"targets contain duplicates: {dupes}")
        return cleaned

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, templates: list[str]) -> list[str]:
        if not templates:
            raise ValueError("templates must not be empty (use ['{}'] for the bare word)")
        bad = [t for t in templates if t.count("{}") != 1 or re.search(r"\{[^}]", t)]
        if bad:
            raise ValueError(f"every template needs exactly one '{{}}' slot and no other braces; bad: {bad[:3]}")
        return templates

    @field_validator("combination")
    @classmethod
    def _combination_two_or_more(cls, parts: list[str] | None) -> list[str] | None:
        if parts is not None and (len(parts) < 2 or any(not p.strip() for p in parts)):
            raise ValueError("combination needs at least two non-empty parts, e.g. ['red', 'circle']")
        return parts

    @model_validator(mode="after")
    def _check_consistency(self) -> ConceptSpec:
        unknown = sorted(set(self.target_anchors) - set(self.targets))
        if unknown:
            raise ValueError(f"target_anchors has keys that are not targets: {unknown}")
        if self.combination is not None and self.condition is not None:
            raise ValueError("a concept is either a combination or a conditional concept, not both")
        names = {t.lower() for t in self.targets}
        same = [t for t in self.targets if self.anchor_for(t).strip().lower() in names]
        if same and self.combination is None and self.condition is None:
            raise ValueError(f"the anchor of target {same[0]!r} is {self.anchor_for(same[0])!r}, itself a target: "
                             "erasing towards it changes nothing; choose another anchor")
        return self

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConceptSpec:
        """Validate a plain dict; errors become one readable `ConceptSpecError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            name = data.get("name", "?") if isinstance(data, dict) else "?"
            lines = [f"  {'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in err.errors()]
            raise ConceptSpecError(f"invalid concept {name!r}:\n" + "\n".join(lines)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> ConceptSpec:
        """Load a spec from a ``.yaml``/``.yml`` or ``.json`` file; unreadable files raise `ConceptSpecError`."""
        import yaml

        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConceptSpecError(f"{path}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at "
                                   f"{err.start}); save it as UTF-8") from None
        except OSError as err:
            raise ConceptSpecError(f"{path}: cannot read it ({err.strerror or err})") from None
        try:
            data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConceptSpecError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', None) or err}") from None
        except ValueError as err:
            raise ConceptSpecError(f"{path}: malformed JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConceptSpecError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=False)

    def effective_dict(self) -> dict[str, Any]:
        """`to_dict` less ``anchor_alternatives``: what one erasure of this spec depends on.

        The alternatives only matter through the anchor they resolve to when
        several concepts are erased together (`erasekit.concepts.joint`), and
        that anchor is then the spec's ``anchor``.
        """
        data = self.to_dict()
        data.pop("anchor_alternatives")
        return data

    def names_target(self, text: str) -> bool:
        """Whether ``text`` contains one of the targets as whole words (case-insensitive)."""
        return any(re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])", text, re.IGNORECASE) for t in self.targets)

    # ---------------------------------------------------------------- prompts
    @property
    def canonical(self) -> str:
        return self.targets[0]

    @property
    def synonyms(self) -> list[str]:
        return self.targets[1:]

    def anchor_for(self, target: str) -> str:
        return self.target_anchors.get(target, self.anchor)

    def with_anchor(self, anchor: str) -> ConceptSpec:
        """This concept with ``anchor`` for every target (validated: an anchor that is a target raises
        `ConceptSpecError`)."""
        return ConceptSpec.from_dict({**self.to_dict(), "anchor": anchor, "target_anchors": {}})

    def fill(self, template: str, word: str) -> str:
        """Put ``word`` in ``template``; tidy spaces (empty anchors) and, if enabled, a/an."""
        text = _SPACES.sub(" ", template.replace("{}", word)).strip()
        text = re.sub(r"\s+([,.;:])", r"\1", text)
        if self.article_agreement:
            text = _VOWEL_AFTER_A.sub(lambda m: m.group(1) + "n ", text)
        return text

    def _grid(self, n_targets: int | None, n_templates: int | None) -> list[tuple[str, str]]:
        targets = self.targets[:n_targets] if n_targets is not None else self.targets
        templates = self.templates[:n_templates] if n_templates is not None else self.templates
        return [(t, tpl) for t in targets for tpl in templates]

    def target_prompts(self, n_targets: int | None = None, n_templates: int | None = None) -> list[str]:
        """Every (target, template) prompt, target-major: targets x templates."""
        return [self.fill(tpl, t) for t, tpl in self._grid(n_targets, n_templates)]

    def anchor_prompts(self, n_targets: int | None = None, n_templates: int | None = None) -> list[str]:
        """The anchor in the same template, aligned one-to-one with `target_prompts`."""
        return [self.fill(tpl, self.anchor_for(t)) for t, tpl in self._grid(n_targets, n_templates)]

    def unnamed_prompts(self, n_targets: int | None = None, n_templates: int | None = None) -> list[str]:
        """Each template with the target left out, aligned one-to-one with `target_prompts`: what the
        model draws when the concept's attribute is not named ("a red shape" -> "a shape")."""
        return [self.fill(tpl, "") for _, tpl in self._grid(n_targets, n_templates)]

    def prompt_pairs(self, n_templates: int = 0) -> tuple[list[str], list[str]]:
        """Target prompts and their anchor prompts: every target in the first ``n_templates`` templates,
        or (0) the bare target words, each with its anchor."""
        if n_templates:
            return self.target_prompts(None, n_templates), self.anchor_prompts(None, n_templates)
        targets = list(self.targets)
        return targets, [self.anchor_for(t) for t in targets]

    def retain_prompts(self, n_templates: int | None = None) -> list[str]:
        """Prompts that must keep working for a combination or conditional concept.

        An explicit ``retain`` list wins.  Otherwise a combination keeps each part
        alone, and a conditional concept keeps the concept alone and the context
        alone, each in every template.  Plain concepts return ``[]``.
        """
        if self.retain is not None:
            return list(self.retain)
        if self.combination is not None:
            parts = self.combination
        elif self.condition is not None:
            parts = [self.condition.concept, self.condition.context]
        else:
            return []
        templates = self.templates[:n_templates] if n_templates is not None else self.templates
        return [self.fill(tpl, p) for p in parts for tpl in templates]
