"""`EditSession`: snapshot the tensors a method will change, turn the edit into a `WeightDelta`, undo it.

Every method edits the pipeline only through the delta it returns: ``erase``
leaves ``pipe`` as it found it.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..concepts.spec import ConceptSpec
from ..models.delta import (
    WeightDelta,
    applied_deltas,
    peak_memory_bytes,
    resolve_tensors,
    revert_delta,
    snapshot,
)
from ..models.loading import SHAPES_ID, is_shapes_world
from .config import MethodConfig


class EditSession:
    """Snapshot the tensors a method will change, then turn the edit into a delta and undo it.

    ``with EditSession(pipe, names, ...) as s: <edit in place>``; afterwards
    ``s.delta`` holds the result and ``pipe`` is back to its original weights.
    """

    def __init__(self, pipe, names: list[str], method: str, config: MethodConfig, concept: ConceptSpec,
                 base_model: str | None = None):
        self.pipe, self.names, self.method, self.config, self.concept = pipe, names, method, config, concept
        self.base_model = base_model or (SHAPES_ID if is_shapes_world(pipe) else
                                         getattr(getattr(pipe, "config", None), "_name_or_path", None))
        applied = applied_deltas(pipe)
        self.parent = applied[-1] if applied else None
        self.delta: WeightDelta | None = None
        self.metrics: dict[str, Any] = {}

    def __enter__(self) -> "EditSession":
        self.originals = snapshot(self.pipe, self.names)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            _restore(self.pipe, self.originals)
            return
        config = {**self.config.model_dump(), "concept": self.concept.to_dict()}
        self.delta = WeightDelta.from_changes(
            self.pipe, self.originals, record=True, method=self.method, config=config,
            seed=self.config.seed, base_model=self.base_model, metrics=self.metrics, parent=self.parent,
            wall_time_s=time.perf_counter() - self.t0, peak_memory=peak_memory_bytes(),
        )
        revert_delta(self.pipe, self.delta)


@torch.no_grad()
def _restore(pipe, originals: dict[str, torch.Tensor]) -> None:
    for name, t in resolve_tensors(pipe, originals).items():
        if t is not None:
            t.copy_(originals[name])
