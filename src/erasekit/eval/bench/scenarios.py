"""The fixed Shapes-world scenarios of the headline benchmark, as data, and their prompts.

A scenario names the Shapes-pack concepts a method erases (several = a
multi-concept erasure, done one after the other), the attribute values whose
joint presence in an image counts as "the target is still there", and the
explicit preservation prompts (value sets) whose adherence must survive.

Prompts are built deterministically: a `Probe` is (prompt, expected values,
seed, tier).  Target probes word the target values in one wording tier
(explicit / synonym / implicit) and name a ``partner`` attribute explicitly
(cycling its values) so images differ; every wording tier uses the same seeds
``TARGET_SEED + k`` (paired: only the wording changes).  Preservation probes
are explicit captions with seeds ``PRESERVE_SEED + k``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ...world.captions import Mention, caption
from ...world.vocabulary import TIERS, VALUES, load_vocabulary

TARGET_SEED = 0
PRESERVE_SEED = 10_000


@dataclass(frozen=True)
class Probe:
    prompt: str
    expected: dict[str, str]
    seed: int
    tier: str
    target: int = 0  # which of the scenario's targets the prompt names (multi-concept scenarios)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    concepts: tuple[str, ...]
    targets: tuple[dict[str, str], ...]
    partner: str | None
    preserve: tuple[dict[str, str], ...]
    checked: tuple[str, ...]
    description: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def multi(self) -> bool:
        return len(self.concepts) > 1

    def as_dict(self) -> dict:
        return asdict(self)

    def specs(self) -> list:
        """The Shapes-pack concept specs, anchors moved off each other's targets when several are erased.

        See `erasekit.concepts.joint`: in ``multi`` red's and green's counterpart
        anchors (green, red) are erased too, so they become yellow and orange.
        """
        from ...concepts.joint import separate_anchors
        from ...concepts.packs import get_concept

        return separate_anchors([get_concept(name, world="shapes") for name in self.concepts])


def _others(attribute: str, *exclude: str) -> list[str]:
    return [v for v in VALUES[attribute] if v not in exclude]


def _scenarios() -> dict[str, Scenario]:
    items = [
        Scenario("object", "object: circle", ("circle",), ({"shape": "circle"},), "color",
                 tuple({"shape": s} for s in _others("shape", "circle")), ("shape",),
                 "a shape (object concept); preservation: the other five shapes"),
        Scenario("style", "style: striped", ("striped",), ({"style": "striped"},), "shape",
                 tuple({"style": s} for s in _others("style", "striped")), ("style",),
                 "a texture (style concept); preservation: the other three styles"),
        Scenario("attribute", "attribute: red (implicit wording tested)", ("red",), ({"color": "red"},), "shape",
                 tuple({"color": c} for c in _others("color", "red")), ("color",),
                 "a color (attribute concept); preservation: the other five colors"),
        Scenario("combination", "combination: red circle", ("red-circle",), ({"color": "red", "shape": "circle"},),
                 None,
                 tuple([{"color": "red", "shape": s} for s in _others("shape", "circle")]
                       + [{"color": c, "shape": "circle"} for c in _others("color", "red")]),
                 ("color", "shape"),
                 "red circles only; preservation: the parts alone (red other shapes, circles of other colors)"),
        Scenario("conditional", "conditional: circle on a dark background", ("circle-on-dark",),
                 ({"shape": "circle", "background": "dark"},), "color",
                 tuple([{"shape": "circle", "background": b} for b in _others("background", "dark")]
                       + [{"shape": s, "background": "dark"} for s in _others("shape", "circle")]),
                 ("shape", "background"),
                 "circles only on dark backgrounds; preservation: circles on other backgrounds, other shapes on dark"),
        Scenario("multi", "multi-concept: red, green and blue at once", ("red", "green", "blue"),
                 ({"color": "red"}, {"color": "green"}, {"color": "blue"}), "shape",
                 tuple({"color": c} for c in _others("color", "red", "green", "blue")), ("color",),
                 "three colors erased one after the other (deltas composed); preservation: the other three colors"),
    ]
    return {s.key: s for s in items}


SCENARIOS: dict[str, Scenario] = _scenarios()


def get_scenario(key: str) -> Scenario:
    if key not in SCENARIOS:
        raise KeyError(f"unknown scenario {key!r}; scenarios: {', '.join(SCENARIOS)}")
    return SCENARIOS[key]


def _mention(attribute: str, value: str, tier: str, choice: int) -> Mention:
    words = load_vocabulary().words(attribute, value, tier)
    return Mention(value, tier, words[choice % len(words)])


def _caption(values: dict[str, str], tiers: dict[str, str], choice: int, template_index: int) -> str:
    templates = load_vocabulary().templates
    mentions = {a: _mention(a, v, tiers[a], choice) for a, v in values.items()}
    return caption(mentions, templates[template_index % len(templates)])


def target_probes(scenario: Scenario, tier: str, n: int) -> list[Probe]:
    """``n`` prompts naming the scenario's targets (cycled) in wording ``tier``; seeds TARGET_SEED + k."""
    if tier not in TIERS:
        raise ValueError(f"unknown wording tier {tier!r}; tiers: {', '.join(TIERS)}")
    probes = []
    n_targets = len(scenario.targets)
    for k in range(n):
        index, round_ = k % n_targets, k // n_targets
        values = dict(scenario.targets[index])
        tiers = {a: tier for a in values}
        if scenario.partner is not None:
            partner_values = VALUES[scenario.partner]
            values[scenario.partner] = partner_values[round_ % len(partner_values)]
            tiers[scenario.partner] = "explicit"
        probes.append(Probe(_caption(values, tiers, round_, round_), values, TARGET_SEED + k, tier, index))
    return probes


def preservation_probes(scenario: Scenario, n: int) -> list[Probe]:
    """``n`` explicit prompts cycling the scenario's preservation value sets; seeds PRESERVE_SEED + k."""
    probes = []
    sets = scenario.preserve
    for k in range(n):
        values = dict(sets[k % len(sets)])
        round_ = k // len(sets)
        if scenario.partner is not None and scenario.partner not in values:
            partner_values = VALUES[scenario.partner]
            values[scenario.partner] = partner_values[(k + round_) % len(partner_values)]
        tiers = {a: "explicit" for a in values}
        probes.append(Probe(_caption(values, tiers, 0, k), values, PRESERVE_SEED + k, "preservation"))
    return probes


def shows_target(read: dict[str, str], target: dict[str, str]) -> bool:
    """True when the detector's reading has every target value (the concept is still drawn)."""
    return all(read.get(a) == v for a, v in target.items())
