"""Turn generated images into metrics: ASR per tier, preservation, Frechet distances, CLIP score.

``images`` maps an image-set name (``original``, and ``erased`` when a delta was
evaluated) to the images of ``plan.rows`` in order.  The evaluated set is
``erased`` when present, else ``original``; preservation compares it with
``original`` (1.0 when there is no delta: the model relative to itself).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import metrics as M
from .plan import EvalPlan


def evaluated_set(images: dict[str, list]) -> str:
    return "erased" if "erased" in images else "original"


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
    adherence: dict[str, Any] = {"measure": plan.measure}
    per_image_adherence: dict[str, list] = {}
    if plan.preservation and plan.measure == "shapes" and shapes is not None:
        expected = [r.extra for r in plan.preservation]
        for name, imgs in pres.items():
            read = shapes.read(imgs)
            adherence[name] = M.shapes_adherence(read, expected)
            per_image_adherence[name] = [bool(read["shape"][k] == e.get("shape") and read["color"][k] == e.get("color"))
                                         for k, e in enumerate(expected)]
        values = {name: adherence[name]["both"] for name in pres}
    elif plan.preservation and plan.measure == "clip" and clip is not None:
        prompts = [r.prompt for r in plan.preservation]
        values = {}
        for name, imgs in pres.items():
            s = M.clip_scores(clip, imgs, prompts)
            adherence[name] = _stats(s)
            per_image_adherence[name] = [float(v) for v in s]
            values[name] = float(s.mean())
        metrics["clip_score"] = {name: values[name] for name in pres}
    else:
        values = {}
        adherence["note"] = ("no preservation prompts" if not plan.preservation
                             else "needs CLIP for COCO preservation prompts (--clip PATH or $ERASEKIT_CLIP)")
    if clip is not None and plan.preservation and "clip_score" not in metrics:
        prompts = [r.prompt for r in plan.preservation]
        metrics["clip_score"] = {name: float(M.clip_scores(clip, imgs, prompts).mean()) for name, imgs in pres.items()}
    metrics["adherence"] = adherence
    if not values:
        metrics["preservation"] = None
    elif main == "original":
        metrics["preservation"] = 1.0  # no delta: the model relative to itself
    else:
        ratio = M.preservation(values[main], values["original"])
        metrics["preservation"] = ratio if np.isfinite(ratio) else None
        if not np.isfinite(ratio):
            adherence["note"] = "the original model's adherence is 0: no ratio"

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
