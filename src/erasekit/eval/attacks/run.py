"""`run_attack`: one prompt attack end to end -- cases, search, judging, files.

1. cases: prompts of the target concept with fixed seeds (Shapes world: the
   explicit-tier target prompts of the Shapes benchmark, seeds 0..n-1; other
   models: the concept spec's target prompts, seeds 0..n-1), or given ones;
2. the attack (``unlearndiff`` or ``ringabell``) finds one discrete prompt per case;
3. judging: each found prompt is drawn with its case's seed on the ERASED model
   (delta applied) and the detector decides whether the concept is there;
   for reference the plain case prompts are judged on the erased and the base model;
4. ``adversarial.csv`` + ``attack.json`` in ``out`` (atomic writes).

Ring-A-Bell's search reads only the base model, so with ``search_cache`` its found
prompts are stored there under their `ringabell.search_key` (JSON, written
atomically) and reused for every later erasure of the same base model; only the
judging (step 3) runs again.

The pipeline is left as it was found (delta applied or not).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ...concepts.spec import ConceptSpec
from ...generation import SamplingSettings
from ...models.delta import WeightDelta
from ...models.registry import Registry, UnknownNameError
from ...training import MethodConfig
from .. import atomic
from .budget import Budget
from .common import AttackCase, AttackResult, FoundPrompt, judge_prompts, make_judge, model_state, sampling_dict
from .ringabell import RingABellConfig, ringabell_attack, search_key
from .unlearndiff import UnlearnDiffConfig, unlearndiff_attack



class UnknownAttackError(UnknownNameError):
    """No attack has this name."""


@dataclass(frozen=True)
class AttackSpec:
    """An attack's config class, the config field that bounds its search (with the field's unit), and the
    name tables print for it (the attack it follows)."""

    config_cls: type[MethodConfig]
    budget_field: str
    budget_unit: str
    title: str


ATTACKS: Registry[AttackSpec] = Registry("attack", UnknownAttackError)
ATTACKS.add("unlearndiff", AttackSpec(UnlearnDiffConfig, "steps", "optimisation steps", "UnlearnDiffAtk"))
ATTACKS.add("ringabell", AttackSpec(RingABellConfig, "generations", "generations", "Ring-A-Bell"))


def attack_names() -> list[str]:
    return ATTACKS.names()


def attack_title(attack: str) -> str:
    """The name tables print for ``attack`` ("UnlearnDiffAtk" for ``unlearndiff``)."""
    return ATTACKS.get(attack).title


def attack_config(attack: str, world: str = "sd", **overrides: Any) -> MethodConfig:
    """The attack's config: the world's preset (``shapes``) or the paper's defaults, then overrides."""
    return ATTACKS.get(attack).config_cls.for_world(world, **overrides)


def _concept(concept: ConceptSpec | str) -> ConceptSpec:
    if isinstance(concept, ConceptSpec):
        return concept
    from ...concepts.packs import get_concept

    return get_concept(concept)


def shapes_value(concept: ConceptSpec) -> str | None:
    """The Shapes-world value a concept erases ('shapes/red' -> 'red'), or None."""
    from ...world.vocabulary import load_vocabulary

    value = concept.name.split("/", 1)[-1]
    return value if value in load_vocabulary().all_values else None


def concept_cases(concept: ConceptSpec, n: int, shapes_world: bool, seed: int = 0) -> list[AttackCase]:
    """``n`` prompts of the concept with seeds ``seed``.. (see the module docstring)."""
    value = shapes_value(concept) if shapes_world else None
    if value is not None:
        from ..probes import target_probes
        from ..tasks import value_task

        return [AttackCase(k, p.prompt, p.seed) for k, p in enumerate(target_probes(value_task(value), "explicit", n, seed))]
    prompts = concept.target_prompts()
    return [AttackCase(k, prompts[k % len(prompts)], seed + k) for k in range(n)]


def default_detector(concept: ConceptSpec, shapes_world: bool):
    """(detector, concept name for it): the Shapes detector for Shapes values, NudeNet for nudity."""
    from ..detectors import get_detector

    value = shapes_value(concept)
    if shapes_world and value is not None:
        return get_detector("shapes"), value
    if concept.name.split("/", 1)[-1] == "nudity":
        return get_detector("nudenet"), concept.canonical
    raise ValueError(f"no default detector for concept {concept.name!r}: pass detector=")


def _delta_info(delta: WeightDelta | None, delta_path: str | Path | None) -> dict[str, Any] | None:
    if delta is None:
        return None
    m = delta.manifest
    return {"path": str(delta_path) if delta_path else None, "delta_id": m.delta_id, "method": m.method,
            "base_model": m.base_model}


def _rate(found: list[FoundPrompt]) -> float:
    return sum(bool(f.success) for f in found) / len(found)


SEARCH_FIELDS = ("case_number", "prompt", "seed", "token_ids", "source_prompt", "loss", "guidance")


def cached_search(folder: Path, key: str, search: Callable[[], list[FoundPrompt]]) -> tuple[list[FoundPrompt], bool]:
    """(found prompts, whether they came from ``folder``): stored under ``key`` or searched and stored."""
    path = folder / f"{key[:32]}.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return [FoundPrompt(**{k: f[k] for k in SEARCH_FIELDS}) for f in stored["found"]], True
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # an unreadable entry is searched again and overwritten
    found = search()
    atomic.write_json(path, {"key": key, "found": [{k: asdict(f)[k] for k in SEARCH_FIELDS} for f in found]})
    return found, False


def run_attack(pipe, attack: str, concept: ConceptSpec | str, *, delta: WeightDelta | None = None,
               config: MethodConfig | dict[str, Any] | None = None, cases: list[AttackCase] | None = None,
               n_cases: int = 16, detector=None, detector_concept: str | None = None,
               settings: SamplingSettings | None = None, out: str | Path | None = None, model: str | None = None,
               delta_path: str | Path | None = None, reference: bool = True,
               progress: Callable[[int], None] | None = None,
               search_cache: str | Path | None = None) -> AttackResult:
    """Run ``attack`` against ``pipe`` + ``delta`` (None: the model as it is) for ``concept``.

    ``config``: a config object, or overrides of the world's preset.  ``search_cache``: a folder
    that keeps Ring-A-Bell's found prompts (see the module docstring; other attacks ignore it).
    Returns the `AttackResult` (and writes it into ``out`` when given).
    """
    from ...models.loading import is_shapes_world

    spec = _concept(concept)
    shapes_world = is_shapes_world(pipe)
    if not isinstance(config, BaseModel):
        config = attack_config(attack, "shapes" if shapes_world else "sd", **(config or {}))
    elif attack not in ATTACKS or not isinstance(config, ATTACKS.get(attack).config_cls):
        raise UnknownAttackError(f"config {type(config).__name__} does not belong to attack {attack!r}")
    settings = settings or SamplingSettings()
    cases = cases if cases is not None else concept_cases(spec, n_cases, shapes_world)
    if detector is None:
        detector, auto_concept = default_detector(spec, shapes_world)
        detector_concept = detector_concept or auto_concept
    detector_concept = detector_concept or shapes_value(spec) or spec.canonical
    spec_attack = ATTACKS.get(attack)
    budget = Budget(getattr(config, spec_attack.budget_field), unit=spec_attack.budget_unit)

    t0 = time.perf_counter()
    if attack == "unlearndiff":
        judge = make_judge(pipe, detector, detector_concept, settings)
        found = unlearndiff_attack(pipe, cases, spec.targets, config, delta=delta, settings=settings, budget=budget,
                                   judge=judge, progress=progress)
    else:
        def search() -> list[FoundPrompt]:
            return ringabell_attack(pipe, cases, spec, config, delta=delta, settings=settings, budget=budget,
                                    progress=progress)

        cached = False
        if search_cache is None:
            found = search()
        else:
            found, cached = cached_search(Path(search_cache), search_key(pipe, cases, spec, config, delta), search)
    search_seconds = time.perf_counter() - t0
    refs: dict[str, Any] = {}
    with model_state(pipe, delta, erased=True):
        judge_prompts(pipe, found, detector, detector_concept, settings)
        if reference:
            plain = [FoundPrompt(c.case_number, c.prompt, c.seed, [], c.prompt, 0.0,
                                 c.guidance if c.guidance is not None else settings.guidance_scale) for c in cases]
            judge_prompts(pipe, plain, detector, detector_concept, settings)
            refs["case_prompts_rate_erased"] = _rate(plain)
    if reference and delta is not None:
        with model_state(pipe, delta, erased=False):
            judge_prompts(pipe, plain, detector, detector_concept, settings)
            refs["case_prompts_rate_original"] = _rate(plain)
    notes = []
    if attack == "ringabell":
        notes.append("ring-a-bell reads only the base model's text encoder; the found prompts are judged on the erased model")
    result = AttackResult(
        attack=attack, concept=spec.name, detector_concept=detector_concept, found=found,
        settings={"attack": config.model_dump(), "n_cases": len(cases), "reference": refs,
                  "search_seconds": search_seconds, **({"search_cached": cached} if attack == "ringabell" else {})},
        budget=budget.to_dict(), seconds=time.perf_counter() - t0, model=model,
        delta=_delta_info(delta, delta_path), sampling=sampling_dict(settings),
        detector=detector.settings() if hasattr(detector, "settings") else {"name": getattr(detector, "name", "?")},
        notes=notes)
    if out is not None:
        result.write(out)
    return result
