"""Fine-tuning infrastructure shared by the methods: configs, the edit session, the trainer and its parts.

- `config`: `MethodConfig` (every method's config base) and `FineTuneConfig` (the trainer's settings);
- `session`: `EditSession`, which turns an in-place edit into a `WeightDelta` and undoes it;
- `trainer`: the `Trainer` loop; `fine_tune`: a method's step function -> its delta;
- `checkpoints`, `optim`, `rng`, `progress`, `data_parallel`: the loop's parts.
"""

from .checkpoints import CheckpointMismatchError, list_checkpoints
from .config import FineTuneConfig, MethodConfig, run_key
from .fine_tune import fine_tune
from .rng import randint, step_generator
from .session import EditSession
from .trainer import NonFiniteLossError, StepFn, Trainer, TrainResult, reference_weights

__all__ = ["CheckpointMismatchError", "EditSession", "FineTuneConfig", "MethodConfig", "NonFiniteLossError", "StepFn",
           "TrainResult", "Trainer", "fine_tune", "list_checkpoints", "randint", "reference_weights", "run_key",
           "step_generator"]
