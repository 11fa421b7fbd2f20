"""Helpers for tests that erase a concept from the shipped Shapes model and read the detector."""

from __future__ import annotations

import numpy as np


def target_and_kept_rates(pipe, detector, value: str, n: int = 24, n_keep: int | None = None) -> tuple[float, float]:
    """(rate of ``value`` on n explicit prompts, adherence of the other values on ``n_keep`` (2n) preservation prompts)."""
    from erasekit.eval.probes import preservation_probes, target_probes
    from erasekit.eval.tasks import value_task
    from erasekit.generation import SamplingSettings, generate
    from erasekit.world.assets_paths import SHAPES_MODEL_DIR
    from erasekit.world.vocabulary import load_vocabulary

    settings = SamplingSettings.for_model(SHAPES_MODEL_DIR)
    attribute = load_vocabulary().attribute_of(value)
    rows = target_probes(value_task(value), "explicit", n)
    pred = detector.predict(generate(pipe, [r.prompt for r in rows], [r.seed for r in rows], settings))[attribute]
    keep_rows = preservation_probes(value_task(value), n_keep or 2 * n)
    kept = detector.predict(generate(pipe, [r.prompt for r in keep_rows], [r.seed for r in keep_rows], settings))[attribute]
    return float(np.mean([p == value for p in pred])), float(np.mean([p == r.expected[attribute]
                                                                      for p, r in zip(kept, keep_rows)]))


# The original model's rates, measured once per (pipeline, value, prompt counts) in a test session:
# several tests erase the same value from the same session-scoped Shapes pipeline.
_ORIGINAL_RATES: dict[tuple, tuple[float, float]] = {}


def rates_before_and_after(pipe, detector, delta, value: str, n: int = 24,
                           n_keep: int | None = None) -> tuple[float, float, float, float]:
    """`target_and_kept_rates` on the original model and with ``delta`` applied (reverted afterwards)."""
    from erasekit.models.delta import applied_deltas, apply_delta, revert_delta

    assert applied_deltas(pipe) == [], "the 'before' rates are the original model's: revert every delta first"
    key = (id(pipe), id(detector), value, n, n_keep)
    if key not in _ORIGINAL_RATES:
        _ORIGINAL_RATES[key] = target_and_kept_rates(pipe, detector, value, n, n_keep)
    t0, k0 = _ORIGINAL_RATES[key]
    apply_delta(pipe, delta)
    try:
        t1, k1 = target_and_kept_rates(pipe, detector, value, n, n_keep)
    finally:
        revert_delta(pipe, delta)
    return t0, k0, t1, k1
