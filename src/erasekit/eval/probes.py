"""The one generator of Shapes probe prompts: (prompt, expected values, seed, tier) from a task.

A `Probe` is one prompt with the attribute values it names, its seed, its
tier and which of the task's targets it names.  Every prompt is a caption of
the named values (`phrase`): each value worded in its tier, word ``choice``
cycled, template ``template_index`` cycled.

- `target_probes`: prompt ``k`` names target ``k % T`` (T targets) in the
  wording tier, round ``r = k // T``; the partner attribute (when the task has
  one) is named explicitly with its ``r``-th value (cycled); words are choice
  ``r``; the template is ``r`` (``template_advance: round``) or ``r // P``
  (``partner-cycle``, P partner values); seeds ``seed + k`` (``TARGET_SEED``:
  every wording tier uses the same seeds, so only the wording changes).
- `preservation_probes`: prompt ``k`` names preservation set ``k % S`` (S sets)
  explicitly, plus the partner's ``(k + k // S)``-th value when the set does
  not name the partner; word choice 0, template ``k``; seeds ``PRESERVE_SEED + k``.
- `unnamed_probes`: prompt ``k`` names only the partner's ``k``-th value (cycled), explicitly,
  template ``k``; seeds ``UNNAMED_SEED + k``.
- `adherence_probes`: the world model's adherence prompts, every (shape,
  color) pair in one tier, word choice ``k // pairs + k``, template ``k``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..world.captions import Mention, caption
from ..world.vocabulary import COLORS, SHAPES, TIERS, VALUES, load_vocabulary
from .benchmarks import BenchmarkRow
from .tasks import ShapesTask

TARGET_SEED = 0
PRESERVE_SEED = 10_000
PRESERVATION_TIER = "preservation"
UNNAMED_SEED = 20_000
UNNAMED_TIER = "unnamed"


@dataclass(frozen=True)
class Probe:
    prompt: str
    expected: dict[str, str]
    seed: int
    tier: str
    target: int = 0  # which of the task's targets the prompt names (multi-concept tasks)

    def row(self, case_number: int | str) -> BenchmarkRow:
        """The probe as a benchmark row (default guidance; ``extra`` holds the expected values)."""
        return BenchmarkRow(self.prompt, self.seed, None, case_number, dict(self.expected), self.tier)


def phrase(values: dict[str, str], tiers: dict[str, str], choice: int, template_index: int) -> str:
    """The caption naming ``values``, each worded in its tier (word ``choice`` cycled), template cycled."""
    vocab = load_vocabulary()
    mentions = {}
    for attribute, value in values.items():
        words = vocab.words(attribute, value, tiers[attribute])
        mentions[attribute] = Mention(value, tiers[attribute], words[choice % len(words)])
    return caption(mentions, vocab.templates[template_index % len(vocab.templates)])


def target_probes(task: ShapesTask, tier: str, n: int, seed: int = TARGET_SEED) -> list[Probe]:
    """``n`` prompts naming the task's targets (cycled) in wording ``tier``; seeds ``seed + k``."""
    if tier not in TIERS:
        raise ValueError(f"unknown wording tier {tier!r}; tiers: {', '.join(TIERS)}")
    probes = []
    n_targets = len(task.targets)
    for k in range(n):
        index, round_ = k % n_targets, k // n_targets
        values = dict(task.targets[index])
        tiers = {a: tier for a in values}
        template = round_
        if task.partner is not None:
            partner_values = VALUES[task.partner]
            values[task.partner] = partner_values[round_ % len(partner_values)]
            tiers[task.partner] = "explicit"
            if task.template_advance == "partner-cycle":
                template = round_ // len(partner_values)
        probes.append(Probe(phrase(values, tiers, round_, template), values, seed + k, tier, index))
    return probes


def preservation_probes(task: ShapesTask, n: int, seed: int = PRESERVE_SEED) -> list[Probe]:
    """``n`` explicit prompts cycling the task's preservation value sets; seeds ``seed + k``."""
    probes = []
    sets = task.preserve
    for k in range(n):
        values = dict(sets[k % len(sets)])
        round_ = k // len(sets)
        if task.partner is not None and task.partner not in values:
            partner_values = VALUES[task.partner]
            values[task.partner] = partner_values[(k + round_) % len(partner_values)]
        tiers = {a: "explicit" for a in values}
        probes.append(Probe(phrase(values, tiers, 0, k), values, seed + k, PRESERVATION_TIER))
    return probes


def unnamed_probes(task: ShapesTask, n: int, seed: int = UNNAMED_SEED) -> list[Probe]:
    """``n`` prompts naming only the partner attribute (explicit, values cycled), never the target's
    attribute: what the model draws there unasked ("a circle" for red); template ``k``, seeds ``seed + k``."""
    if task.partner is None:
        raise ValueError(f"task {task.key} has no partner attribute to name without its target")
    partner_values = VALUES[task.partner]
    probes = []
    for k in range(n):
        values = {task.partner: partner_values[k % len(partner_values)]}
        probes.append(Probe(phrase(values, {task.partner: "explicit"}, 0, k), values, seed + k, UNNAMED_TIER))
    return probes


def tier_probes(task: ShapesTask, per_tier: int, n_preserve: int, adversarial: list[Probe] | None = None
                ) -> tuple[dict[str, list[Probe]], list[Probe]]:
    """Target probes per wording tier (plus ``adversarial`` when given) and the preservation probes."""
    return target_tiers(task, per_tier, adversarial), preservation_probes(task, n_preserve)


def target_tiers(task: ShapesTask, per_tier: int, adversarial: list[Probe] | None = None) -> dict[str, list[Probe]]:
    """Target probes per wording tier, plus ``adversarial`` (as the tier of that name) when given."""
    tiers = {tier: target_probes(task, tier, per_tier) for tier in TIERS}
    if adversarial:
        tiers["adversarial"] = list(adversarial)
    return tiers


def adherence_probes(tier: str, n: int, seed: int = 0) -> list[Probe]:
    """``n`` prompts naming a shape and a color in wording ``tier`` (cycling all pairs); seeds ``seed + k``."""
    pairs = list(itertools.product(SHAPES, COLORS))
    probes = []
    for k in range(n):
        shape, color = pairs[k % len(pairs)]
        values = {"shape": shape, "color": color}
        probes.append(Probe(phrase(values, {"shape": tier, "color": tier}, k // len(pairs) + k, k), values,
                            seed + k, tier))
    return probes


def target_index(task: ShapesTask, expected: dict[str, str]) -> int:
    """Which of the task's targets a target prompt with these expected values names (the first it contains)."""
    for index, target in enumerate(task.targets):
        if all(expected.get(a) == v for a, v in target.items()):
            return index
    raise ValueError(f"expected values {expected} name none of task {task.key}'s targets")


def shows_target(read: dict[str, str], target: dict[str, str]) -> bool:
    """True when the detector's reading has every target value (the concept is still drawn)."""
    return all(read.get(a) == v for a, v in target.items())
