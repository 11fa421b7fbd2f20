"""Generate a scenario's probe images with the pipeline as it is now and read them with the detector.

`measure_scenario` returns the numbers of one model state (original or
erased): target rate per wording tier (fraction of images that still show
the target), preservation adherence (fraction of preservation images whose
checked attributes are read as named) and the detector's penultimate
features of the preservation images, for the Frechet distance to the
original model's images on the same prompts and seeds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...generation import SamplingSettings, generate
from ...world.vocabulary import TIERS
from ..metrics import frechet_distance, preservation
from .scenarios import Probe, Scenario, preservation_probes, shows_target, target_probes

Progress = Callable[[int], None] | None


def probes_of(scenario: Scenario, per_tier: int, n_preserve: int, adversarial: list[Probe] | None = None
              ) -> tuple[dict[str, list[Probe]], list[Probe]]:
    """Target probes per tier (plus ``adversarial`` when given) and the preservation probes."""
    tiers = {tier: target_probes(scenario, tier, per_tier) for tier in TIERS}
    if adversarial:
        tiers["adversarial"] = list(adversarial)
    return tiers, preservation_probes(scenario, n_preserve)


def image_count(per_tier: int, n_preserve: int, n_adversarial: int = 0) -> int:
    return len(TIERS) * per_tier + n_adversarial + n_preserve


def _images(pipe, probes: list[Probe], settings: SamplingSettings, progress: Progress):
    return generate(pipe, [p.prompt for p in probes], [p.seed for p in probes], settings, progress=progress)


def _readings(reader, images) -> list[dict[str, str]]:
    read = reader.read(images)
    return [{a: read[a][i] for a in read} for i in range(len(images))]


def target_rate(reader, images, probes: list[Probe], scenario: Scenario) -> float:
    readings = _readings(reader, images)
    return float(np.mean([shows_target(r, scenario.targets[p.target]) for r, p in zip(readings, probes)]))


def adherence(reader, images, probes: list[Probe], checked: tuple[str, ...]) -> dict[str, float]:
    """Fraction read as named: all ``checked`` attributes together (``checked``) and each named attribute."""
    readings = _readings(reader, images)
    out = {"checked": float(np.mean([all(r[a] == p.expected[a] for a in checked) for r, p in zip(readings, probes)]))}
    for a in sorted({a for p in probes for a in p.expected}):
        out[a] = float(np.mean([r[a] == p.expected[a] for r, p in zip(readings, probes) if a in p.expected]))
    return out


def measure_scenario(pipe, scenario: Scenario, per_tier: int, n_preserve: int, settings: SamplingSettings,
                     reader, adversarial: list[Probe] | None = None, progress: Progress = None
                     ) -> tuple[dict, np.ndarray]:
    """(numbers, preservation features) of the pipeline's current weights on the scenario's probes."""
    tiers, keep = probes_of(scenario, per_tier, n_preserve, adversarial)
    rates = {}
    for tier, probes in tiers.items():
        rates[tier] = target_rate(reader, _images(pipe, probes, settings, progress), probes, scenario)
    images = _images(pipe, keep, settings, progress)
    numbers = {
        "target_rate": rates,
        "target_rate_mean": float(np.mean([rates[t] for t in TIERS])),
        "n_per_tier": {t: len(p) for t, p in tiers.items()},
        "preservation_adherence": adherence(reader, images, keep, scenario.checked),
        "n_preserve": len(keep),
    }
    return numbers, np.asarray(reader.features(images), dtype=np.float64)


def compare_to_original(erased: dict, erased_features: np.ndarray, original: dict,
                        original_features: np.ndarray) -> dict:
    """Preservation (erased / original adherence) and the Frechet distance of the preservation images."""
    return {
        "preservation": preservation(erased["preservation_adherence"]["checked"],
                                     original["preservation_adherence"]["checked"]),
        "frechet_distance": frechet_distance(erased_features, original_features),
    }
