"""Turn generated images into metrics: rates per tier, adherence, preservation, Frechet distances, CLIP score.

The one scoring path of `erasekit eval` and `erasekit bench`:

- `target_rates`: per tier, the fraction of images that still show every value of
  the target their prompt names (`probes.shows_target` on the detector's reading),
  through `metrics.attack_success_rate` as every rate here;
- `adherence`: the fraction of images whose ``checked`` attributes are all read as
  the prompt named them (``checked``), and per named attribute;
- `score`: one evaluation's metrics.  ``images`` maps an image-set name
  (``original``, and ``erased`` when a delta was evaluated) to the images of
  ``plan.rows`` in order.  The evaluated set is ``erased`` when present, else
  ``original``; ASR per tier with 95% Wilson intervals; preservation compares
  the evaluated set with ``original`` (1.0 when there is no delta).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import metrics as M
from .plan import EvalPlan
from .detectors.base import Detection
from .probes import shows_target, target_index


def evaluated_set(images: dict[str, list]) -> str:
    return "erased" if "erased" in images else "original"


def readings(reader, images) -> list[dict[str, str]]:
    """The value the detector reads per attribute, one dict per image."""
    read = reader.read(images)
    return [{a: read[a][i] for a in read} for i in range(len(images))]


def target_rates(read: list[dict[str, str]], probes, task) -> dict[str, float]:
    """{tier: fraction of images showing every value of their probe's target} plus ``all``."""
    decisions = [shows_target(r, task.targets[p.target]) for r, p in zip(read, probes)]
    return M.attack_success_rate(decisions, [p.tier for p in probes])


def adherence(read: list[dict[str, str]], expected: list[dict[str, str]], checked) -> dict[str, float]:
    """Fraction read as named: all ``checked`` attributes together (``checked``) and each named attribute."""
    out = {"checked": float(np.mean([all(r[a] == e[a] for a in checked) for r, e in zip(read, expected)]))}
    for a in sorted({a for e in expected for a in e}):
        out[a] = float(np.mean([r[a] == e[a] for r, e in zip(read, expected) if a in e]))
    return out


def task_detection(reader, images, rows, task) -> Detection:
    """A scenario's detection: decision = every value of the row's target read; score = fraction read."""
    read = readings(reader, images)
    targets = [task.targets[target_index(task, r.extra)] for r in rows]
    scores = np.array([np.mean([x.get(a) == v for a, v in t.items()]) for x, t in zip(read, targets)], dtype=np.float64)
    decisions = np.array([shows_target(x, t) for x, t in zip(read, targets)], dtype=bool)
    return Detection(scores=scores, decisions=decisions)


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def score(plan: EvalPlan, images: dict[str, list], detector, *, clip=None, inception=None,
          shapes=None) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(metrics, per-image records, detections) for the image sets.

    ``shapes`` is a `ShapesConceptDetector` (for Shapes adherence and the detector-space
    Frechet distance); ``clip`` a `ClipEncoder`; ``inception`` a loaded Inception model.
    """
    n_target = len(plan.targets)
    tiers = [r.tier for r in plan.targets]
    main = evaluated_set(images)
    if plan.task is not None:
        detections = {name: task_detection(shapes, imgs[:n_target], plan.targets, plan.task)
                      for name, imgs in images.items()}
    else:
        detections = {name: detector.detect(imgs[:n_target], plan.concept) for name, imgs in images.items()}
    metrics: dict[str, Any] = {"asr": M.attack_success_rate(detections[main].decisions, tiers)}
    metrics["asr_ci95"] = M.rate_intervals(detections[main].decisions, tiers)
    if main != "original":
        metrics["asr_original"] = M.attack_success_rate(detections["original"].decisions, tiers)
        metrics["asr_original_ci95"] = M.rate_intervals(detections["original"].decisions, tiers)
    metrics["mean_score"] = {name: float(d.scores.mean()) if len(d) else None for name, d in detections.items()}

    records = []
    for i, r in enumerate(plan.targets):
        records.append({"index": i, "tier": r.tier, "case_number": r.case_number, "seed": r.seed,
                        "guidance": r.guidance,
                        "score": {k: float(d.scores[i]) for k, d in detections.items()},
                        "decision": {k: bool(d.decisions[i]) for k, d in detections.items()}})

    pres = {name: imgs[n_target:] for name, imgs in images.items()}
    adhered: dict[str, Any] = {"measure": plan.measure}
    per_image_adherence: dict[str, list] = {}
    if plan.preservation and plan.measure == "shapes" and shapes is not None:
        expected = [r.extra for r in plan.preservation]
        checked = plan.task.checked if plan.task is not None else ("shape", "color")
        if plan.task is not None:
            adhered["checked"] = list(checked)
        for name, imgs in pres.items():
            read = readings(shapes, imgs)
            kept = adherence(read, expected, checked)
            named = [*checked, *(a for a in kept if a not in checked and a != "checked")]
            adhered[name] = {**{a: kept[a] for a in named}, "both": kept["checked"]}
            per_image_adherence[name] = [all(r[a] == e[a] for a in checked) for r, e in zip(read, expected)]
        values = {name: adhered[name]["both"] for name in pres}
    elif plan.preservation and plan.measure == "clip" and clip is not None:
        prompts = [r.prompt for r in plan.preservation]
        values = {}
        for name, imgs in pres.items():
            s = M.clip_scores(clip, imgs, prompts)
            adhered[name] = _stats(s)
            per_image_adherence[name] = [float(v) for v in s]
            values[name] = float(s.mean())
        metrics["clip_score"] = {name: values[name] for name in pres}
    else:
        values = {}
        adhered["note"] = ("no preservation prompts" if not plan.preservation
                             else "needs CLIP for COCO preservation prompts (--clip PATH or $ERASEKIT_CLIP)")
    if clip is not None and plan.preservation and "clip_score" not in metrics:
        prompts = [r.prompt for r in plan.preservation]
        metrics["clip_score"] = {name: float(M.clip_scores(clip, imgs, prompts).mean()) for name, imgs in pres.items()}
    metrics["adherence"] = adhered
    if not values:
        metrics["preservation"] = None
    elif main == "original":
        metrics["preservation"] = 1.0  # no delta: the model relative to itself
    else:
        ratio = M.preservation(values[main], values["original"])
        metrics["preservation"] = ratio if np.isfinite(ratio) else None
        if not np.isfinite(ratio):
            adhered["note"] = "the original model's adherence is 0: no ratio"

    for k, r in enumerate(plan.preservation):
        rec = {"index": n_target + k, "tier": r.tier, "case_number": r.case_number, "seed": r.seed,
               "guidance": r.guidance}
        if per_image_adherence:
            rec["adherence"] = {name: v[k] for name, v in per_image_adherence.items()}
        records.append(rec)

    if main != "original":
        if shapes is not None:
            fd = {}
            for part, sl in (("target", slice(0, n_target)), ("preservation", slice(n_target, None))):
                a, b = images["original"][sl], images["erased"][sl]
                if len(a) >= 2:
                    fd[part] = M.frechet_distance(shapes.features(a), shapes.features(b))
            metrics["frechet_shapes"] = fd
        if inception is not None and len(pres["original"]) >= 2:
            from .fid import fid

            metrics["fid"] = {"preservation": fid(pres["original"], pres["erased"], inception)}
    return metrics, records, detections
