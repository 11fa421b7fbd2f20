"""Measure a Shapes task on the pipeline as it is now: target rates per tier and preservation adherence.

`measure_task` draws a task's probes (`erasekit.eval.probes`) through the one
generation path (`erasekit.eval.generate.draw`) and scores them with the one
scoring path (`erasekit.eval.scoring`): per wording tier the target rate (the
fraction of images that still show every target value), the preservation
adherence (fraction of preservation images whose ``checked`` attributes are
read as named, and per attribute), and the detector's penultimate features of
the preservation images, for the Frechet distance to the original model's
images on the same prompts and seeds.  The benchmark's cells, the erasure
measurements of `measure_erasure` (one Shapes value) and the world model's
`measure_adherence` are all made here, with `unnamed_rate` (how often a value is drawn where
no prompt names its attribute), `value_confusion` (what each other value of the erased
value's attribute is drawn as) and `task_confusion` (what each kept value set of a task is
drawn as).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from ..generation import SamplingSettings
from ..world.vocabulary import ATTRIBUTES, TIERS
from .generate import draw
from .metrics import frechet_distance, preservation, wilson_interval
from .probes import (Probe, adherence_probes, preservation_probes, shows_target, target_tiers, tier_probes,
                     unnamed_probes)
from .scoring import adherence, readings, target_rates
from .tasks import ShapesTask, value_task

Progress = Callable[[int], None] | None


def image_count(per_tier: int, n_preserve: int, n_adversarial: int = 0) -> int:
    return len(TIERS) * per_tier + n_adversarial + n_preserve


def _images(pipe, probes: list[Probe], settings: SamplingSettings, progress: Progress):
    return draw(pipe, [p.row(k) for k, p in enumerate(probes)], settings, progress=progress)


def _tier_rates(pipe, task: ShapesTask, tiers: dict[str, list[Probe]], settings: SamplingSettings, reader,
                progress: Progress) -> dict[str, float]:
    return {tier: target_rates(readings(reader, _images(pipe, probes, settings, progress)), probes, task)[tier]
            for tier, probes in tiers.items()}


def measure_target_rates(pipe, task: ShapesTask, per_tier: int, settings: SamplingSettings, reader,
                         adversarial: list[Probe] | None = None, progress: Progress = None) -> dict[str, float]:
    """Per wording tier (and ``adversarial``), the target rate of the pipeline's current weights: the
    same probes and images as `measure_task`'s, without its preservation probes."""
    return _tier_rates(pipe, task, target_tiers(task, per_tier, adversarial), settings, reader, progress)


def measure_task(pipe, task: ShapesTask, per_tier: int, n_preserve: int, settings: SamplingSettings, reader,
                 adversarial: list[Probe] | None = None, progress: Progress = None, features: bool = True,
                 keep_readings: list | None = None) -> tuple[dict, np.ndarray | None]:
    """(numbers, preservation features or None) of the pipeline's current weights on the task's probes.

    ``reader`` is a `ShapesConceptDetector` (``read`` and ``features``).  A list given as
    ``keep_readings`` receives each preservation probe with what the reader reads in its image (the
    pairs `task_preservation_readings` draws, without drawing them again).
    """
    if n_preserve < 1:
        raise ValueError(f"measure_task needs at least one preservation prompt (got n_preserve={n_preserve})")
    tiers, keep = tier_probes(task, per_tier, n_preserve, adversarial)
    rates = _tier_rates(pipe, task, tiers, settings, reader, progress)
    images = _images(pipe, keep, settings, progress)
    read = readings(reader, images)
    if keep_readings is not None:
        keep_readings.extend(zip(keep, read))
    numbers = {
        "target_rate": rates,
        "target_rate_mean": float(np.mean([rates[t] for t in TIERS])),
        "n_per_tier": {t: len(p) for t, p in tiers.items()},
        "preservation_adherence": adherence(read, [p.expected for p in keep], task.checked),
        "n_preserve": len(keep),
    }
    return numbers, (np.asarray(reader.features(images), dtype=np.float64) if features else None)


def compare_to_original(erased: dict, erased_features: np.ndarray, original: dict,
                        original_features: np.ndarray) -> dict:
    """Preservation (erased / original adherence) and the Frechet distance of the preservation images."""
    return {
        "preservation": preservation(erased["preservation_adherence"]["checked"],
                                     original["preservation_adherence"]["checked"]),
        "frechet_distance": frechet_distance(erased_features, original_features),
    }


def _reader(detector):
    from .detectors.shapes import ShapesConceptDetector

    if detector is None:
        from ..world.assets_paths import load_detector

        detector = load_detector()
    return detector if isinstance(detector, ShapesConceptDetector) else ShapesConceptDetector(detector)


def measure_erasure(pipe, value: str, n_per_tier: int = 32, n_preserve: int = 60,
                    settings: SamplingSettings | None = None, detector=None, progress=None) -> dict:
    """Target rate per tier and shape/color/both preservation adherence for one Shapes value (`value_task`)."""
    settings = settings or SamplingSettings()
    task = value_task(value)
    numbers, _ = measure_task(pipe, task, n_per_tier, n_preserve, settings, _reader(detector), progress=progress,
                              features=False)
    kept = numbers["preservation_adherence"]
    return {"target": value, "attribute": next(iter(task.targets[0])), "settings": vars(settings).copy(),
            "target_rate": {t: numbers["target_rate"][t] for t in TIERS},
            "preservation_adherence": {"shape": kept["shape"], "color": kept["color"], "both": kept["checked"]}}


def preservation_readings(pipe, value: str, n_preserve: int = 48, settings: SamplingSettings | None = None,
                          detector=None) -> list[tuple[Probe, dict[str, str]]]:
    """Each preservation probe of one Shapes value (`measure_erasure`'s, same prompts and seeds) with
    what the detector reads in its image: the prompts behind the preservation adherence."""
    return task_preservation_readings(pipe, value_task(value), n_preserve, settings, detector)


def task_preservation_readings(pipe, task: ShapesTask, n_preserve: int = 48, settings: SamplingSettings | None = None,
                               detector=None) -> list[tuple[Probe, dict[str, str]]]:
    """Each of a task's preservation probes (`measure_task`'s, same prompts and seeds) with what the
    detector reads in its image."""
    keep = preservation_probes(task, n_preserve)
    read = readings(_reader(detector), _images(pipe, keep, settings or SamplingSettings(), None))
    return list(zip(keep, read))


def unnamed_rate(pipe, value: str, n: int = 96, settings: SamplingSettings | None = None, detector=None) -> dict:
    """How often the pipeline draws ``value`` where no prompt names its attribute (`unnamed_probes`):
    {"value", "n", "hits", "rate", "interval" (95% Wilson), "read" (values read, counted)}."""
    task = value_task(value)
    probes = unnamed_probes(task, n)
    read = readings(_reader(detector), _images(pipe, probes, settings or SamplingSettings(), None))
    attribute = next(iter(task.targets[0]))
    hits = sum(shows_target(r, task.targets[0]) for r in read)
    counted = Counter(r[attribute] for r in read)
    return {"value": value, "attribute": attribute, "n": n, "hits": hits, "rate": hits / n,
            "interval": list(wilson_interval(hits, n)), "read": dict(counted.most_common())}


def value_confusion(pipe, value: str, n_preserve: int = 96, settings: SamplingSettings | None = None,
                    detector=None) -> dict:
    """What the preservation probes of one Shapes value (`preservation_readings`) are drawn as, per
    value of its attribute: {"value", "attribute", "values": {v: {"n", "kept" (every named attribute
    read as named), "read" (the attribute's readings, counted)}}}; ``value`` itself is never named."""
    return value_confusion_of(value, preservation_readings(pipe, value, n_preserve, settings, detector))


def value_confusion_of(value: str, pairs: list[tuple[Probe, dict[str, str]]]) -> dict:
    """`value_confusion`'s table from its preservation probes' readings ``pairs``."""
    attribute = next(iter(value_task(value).targets[0]))
    return {"value": value, "attribute": attribute, "values": confusion_table(pairs, (attribute,))}


def task_confusion(pipe, task: ShapesTask, n_preserve: int = 48, settings: SamplingSettings | None = None,
                   detector=None) -> dict:
    """What a task's preservation probes (`task_preservation_readings`) are drawn as, per named value
    set of its checked attributes (labelled ``"circle/orange"``, attributes in `ATTRIBUTES` order):
    {"task", "attributes", "values": {label: {"n", "kept" (every named attribute read as named),
    "read" (the checked attributes' readings, labelled alike, counted)}}}."""
    return task_confusion_of(task, task_preservation_readings(pipe, task, n_preserve, settings, detector))


def task_confusion_of(task: ShapesTask, pairs: list[tuple[Probe, dict[str, str]]]) -> dict:
    """`task_confusion`'s table from its preservation probes' readings ``pairs``."""
    attributes = tuple(a for a in ATTRIBUTES if a in task.checked)
    return {"task": task.key, "attributes": list(attributes), "values": confusion_table(pairs, attributes)}


def confusion_table(pairs: list[tuple[Probe, dict[str, str]]], attributes: tuple[str, ...]) -> dict[str, dict]:
    """Probes grouped by their named values of ``attributes`` (joined by "/"): per group the probe
    count, how many were kept (every named attribute read as named) and the readings of
    ``attributes``, counted (most common first).  Probes that leave one of ``attributes`` unnamed
    are skipped."""
    table: dict[str, dict] = {}
    for probe, read in pairs:
        if any(a not in probe.expected for a in attributes):
            continue
        row = table.setdefault("/".join(probe.expected[a] for a in attributes), {"n": 0, "kept": 0, "read": Counter()})
        row["n"] += 1
        row["kept"] += all(read[a] == v for a, v in probe.expected.items())
        row["read"]["/".join(read[a] for a in attributes)] += 1
    return {k: {**r, "read": dict(r["read"].most_common())} for k, r in sorted(table.items())}


def measure_adherence(pipe, per_tier: int = 64, seed: int = 0, settings: SamplingSettings | None = None,
                      detector=None, progress=None) -> dict:
    """The world model's prompt adherence per wording tier: shape, color and both read as named."""
    settings = settings or SamplingSettings()
    reader = _reader(detector)
    table = {"settings": vars(settings).copy(), "per_tier": per_tier, "seed": seed, "tiers": {}}
    for tier in TIERS:
        probes = adherence_probes(tier, per_tier, seed)
        read = readings(reader, _images(pipe, probes, settings, progress))
        kept = adherence(read, [p.expected for p in probes], ("shape", "color"))
        table["tiers"][tier] = {"shape": kept["shape"], "color": kept["color"], "both": kept["checked"]}
    return table
