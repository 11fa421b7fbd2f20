"""What an attack spends: optimisation steps (the budget) and forward calls of the networks.

`Budget` refuses a step past ``max_steps`` (`BudgetExceededError`), so no attack
can overrun its configured budget silently; `count_calls` counts forward passes
of the UNet and the text encoder with forward hooks, independently of the
attack's own bookkeeping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class BudgetExceededError(RuntimeError):
    """An attack tried to take one optimisation step more than its budget."""


@dataclass
class Budget:
    """``max_steps`` optimisation steps (UnlearnDiffAtk iterations, GA generations, fine-tuning steps)."""

    max_steps: int
    unit: str = "steps"
    steps: int = 0
    calls: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.max_steps < 0:
            raise ValueError("the budget must be >= 0 steps")

    def step(self) -> None:
        if self.steps >= self.max_steps:
            raise BudgetExceededError(f"budget of {self.max_steps} {self.unit} exhausted")
        self.steps += 1

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "max_steps": self.max_steps, "steps": self.steps, "forward_calls": dict(self.calls)}


@contextlib.contextmanager
def count_calls(budget: Budget | None, **modules) -> Iterator[dict[str, int]]:
    """Count forward calls of each named module (e.g. ``unet=pipe.unet``) inside the block.

    The counts are added to ``budget.calls`` on exit (when a budget is given).
    """
    counts = {name: 0 for name in modules}
    handles = []
    for name, module in modules.items():
        if module is None:
            continue

        def hook(mod, args, name=name):
            counts[name] += 1

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()
        if budget is not None:
            for name, n in counts.items():
                budget.calls[name] = budget.calls.get(name, 0) + n
