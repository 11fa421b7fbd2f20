"""A weight soup of one hardening setting: the same run with several seeds, its hardened weights averaged.

`souped(run, pipe, delta, concept, config)` calls ``run`` (a variant's harden function) ``config.soup``
times, with seeds ``config.seed``, ``config.seed + 1``, ... and every other setting equal, and returns one
delta relative to the base model, as each run's is, whose tensors are the uniform mean of the runs' new
values (a tensor one run leaves unchanged enters at its base value)::

    W = (1/K) sum_k W_k

(a uniform model soup, after Wortsman et al., ICML 2022). The manifest is the first run's with the soup's
settings; its metrics add ``soup_members`` (the runs' delta ids) and count the iterations of all runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ...concepts.spec import ConceptSpec
from ...models.delta import WeightDelta, snapshot
from ...training.config import MethodConfig

HardenRun = Callable[[object, WeightDelta | None, ConceptSpec, MethodConfig], WeightDelta]


def souped(run: HardenRun, pipe, delta: WeightDelta | None, concept: ConceptSpec, config: MethodConfig) -> WeightDelta:
    """The soup of ``config.soup`` runs of ``run`` (seeds ``config.seed`` + 0, 1, ...); ``pipe`` holds the base model."""
    t0 = time.perf_counter()
    members = [run(pipe, delta, concept, config.model_copy(update={"seed": config.seed + k, "soup": 1}))
               for k in range(config.soup)]
    names = sorted(set().union(*(m.names for m in members)))
    base = snapshot(pipe, names)
    mean = {n: torch.stack([m.tensors.get(n, base[n]).float() for m in members]).mean(0).to(base[n].dtype)
            for n in names}
    first = members[0].manifest
    recorded = dict(first.config)
    recorded["harden"] = {**recorded["harden"], **config.fingerprint()}
    metrics = {**first.metrics, "soup_members": [m.delta_id for m in members],
               "member_iterations": first.metrics.get("iterations"),
               "iterations": sum(m.manifest.metrics.get("iterations") or 0 for m in members)}
    return WeightDelta.from_state_dicts(base, mean, method=first.method, config=recorded, seed=config.seed,
                                        base_model=first.base_model, parent=first.parent, metrics=metrics,
                                        wall_time_s=time.perf_counter() - t0, peak_memory=first.peak_memory_bytes)
