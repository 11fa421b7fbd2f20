"""`fine_tune`: run a fine-tuning method's step function on a pipeline and return its `WeightDelta`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..concepts.spec import ConceptSpec
from ..models.delta import WeightDelta
from ..models.scopes import ParameterScope, get_scope
from .config import FineTuneConfig, run_key
from .session import EditSession
from .trainer import StepFn, Trainer


def fine_tune(pipe, concept: ConceptSpec, config: FineTuneConfig, method: str, scope: str | ParameterScope,
              iterations: int, make_step_fn: Callable[[Trainer], StepFn], **key_extra: Any) -> WeightDelta:
    """Run a fine-tuning method on ``pipe`` and return its delta; ``pipe`` is left unchanged.

    ``make_step_fn(trainer)`` builds the method's step function once the
    trainer exists (so it can use ``trainer.reference()``).
    """
    names = list(get_scope(scope).select(pipe.unet, prefix="unet."))
    with EditSession(pipe, names, method, config, concept) as session:
        trainer = Trainer.from_config(pipe.unet, scope, config, iterations,
                                      run_key=run_key(method, config, concept, **key_extra), description=method,
                                      originals_from=session.originals)
        result = trainer.run(make_step_fn(trainer))
        session.metrics.update(result.metrics(), scope=trainer.scope.name)
    return session.delta
