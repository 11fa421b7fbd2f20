"""Evaluation metrics: attack success rate, preservation, Frechet distance, CLIP score.

- `attack_success_rate`: fraction of images the detector decides show the concept,
  per tier (and over all target images as ``all``).
- `preservation`: adherence on non-target prompts of the erased model relative to
  the original model (erased / original; 1.0 means nothing lost).
- `frechet_distance`: Frechet distance between Gaussians fitted to two feature sets
  (the FID formula; scipy's ``sqrtm``, with the pytorch-fid offset for singular covariances).
- `clip_scores`: 100 x cosine(image, prompt) per image, clamped at 0 (torchmetrics' convention).
- `wilson_interval` / `rate_intervals`: 95% Wilson score intervals of rates, so that
  0.03 vs 0.06 on 32 images reads as the overlap it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import linalg


def attack_success_rate(decisions: Sequence[bool] | np.ndarray, tiers: Sequence[str]) -> dict[str, float]:
    """{tier: fraction of decisions True} for each tier in first-seen order, plus ``all``."""
    decisions = np.asarray(decisions, dtype=bool)
    if len(decisions) != len(tiers):
        raise ValueError(f"{len(decisions)} decisions but {len(tiers)} tier labels")
    tiers = np.asarray(list(tiers), dtype=object)
    out = {t: float(decisions[tiers == t].mean()) for t in dict.fromkeys(tiers.tolist())}
    if len(decisions):
        out["all"] = float(decisions.mean())
    return out


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial rate ``successes / n`` (95% for the default ``z``).

    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``; (0, 1) when ``n`` is 0.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return float(max(0.0, (centre - half) / denom)), float(min(1.0, (centre + half) / denom))


def rate_intervals(decisions: Sequence[bool] | np.ndarray, tiers: Sequence[str]) -> dict[str, list[float]]:
    """{tier: [low, high]} 95% Wilson intervals of `attack_success_rate`'s rates (same keys)."""
    decisions = np.asarray(decisions, dtype=bool)
    tiers = np.asarray(list(tiers), dtype=object)
    out = {t: list(wilson_interval(int(decisions[tiers == t].sum()), int((tiers == t).sum())))
           for t in dict.fromkeys(tiers.tolist())}
    if len(decisions):
        out["all"] = list(wilson_interval(int(decisions.sum()), len(decisions)))
    return out


def preservation(erased: float, original: float) -> float:
    """Adherence of the erased model relative to the original's (erased / original)."""
    if original <= 0:
        return float("nan") if erased <= 0 else float("inf")
    return float(erased / original)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows = samples) of a feature matrix (N, D), float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature rows (N, D), got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_from_stats(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(max(0.0, diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (N, D) and (M, D)."""
    return frechet_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


def clip_scores(clip, images, prompts: list[str]) -> np.ndarray:
    """CLIP score per image: 100 x max(cosine(image, prompt), 0)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    cos = (clip.image_embeddings(images) * clip.text_embeddings(prompts)).sum(dim=1)
    return (100.0 * cos.clamp(min=0)).double().numpy()

