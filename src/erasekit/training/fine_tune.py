"""`fine_tune`: run a fine-tuning method's step function on a pipeline and return its `WeightDelta`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ..concepts.spec import ConceptSpec
from ..models.delta import WeightDelta
from ..models.scopes import ParameterScope, get_scope
from .config import FineTuneConfig, run_key
from .session import EditSession
from .trainer import StepFn, Trainer


def fine_tune(pipe, concept: ConceptSpec, config: FineTuneConfig, method: str, scope: str | ParameterScope,
              iterations: int, make_step_fn: Callable[[Trainer], StepFn],
              around_run: Callable[[Trainer, StepFn], AbstractContextManager] | None = None,
              **key_extra: Any) -> WeightDelta:
    """Run a fine-tuning method on ``pipe`` and return its delta; ``pipe`` is left unchanged.

    ``make_step_fn(trainer)`` builds the method's step function once the
    trainer exists (so it can use ``trainer.reference()``).  Hooks:
    ``around_run(trainer, step_fn)`` is a context entered around the training
    loop (TRuST: its masked optimiser steps); a step function with a
    ``metrics(steps)`` method adds those to the delta's metrics.  ``key_extra``
    joins the run key that guards checkpoints.
    """
    names = list(get_scope(scope).select(pipe.unet, prefix="unet."))
    with EditSession(pipe, names, method, config, concept) as session:
        trainer = Trainer.from_config(pipe.unet, scope, config, iterations,
                                      run_key=run_key(method, config, concept, **key_extra), description=method,
                                      originals_from=session.originals)
        step_fn = make_step_fn(trainer)
        with around_run(trainer, step_fn) if around_run is not None else contextlib.nullcontext():
            result = trainer.run(step_fn)
        own = step_fn.metrics(result.steps) if hasattr(step_fn, "metrics") else {}
        session.metrics.update(result.metrics(), scope=trainer.scope.name, **own)
    return session.delta
