"""Robustness of an erasure: adversarial prompt attacks and concept resurgence.

- `run_attack(pipe, "unlearndiff" | "ringabell", concept, delta=...)`: discrete
  prompts that bring the concept back, judged by a detector on the erased model;
  written as ``adversarial.csv`` (benchmark layout) + ``attack.json``.
- `run_resurgence(pipe, delta, concept, steps=...)`: brief fine-tuning of the
  erased model on benign data, then the target rate again (the delta on disk is
  never touched).
"""

from .budget import Budget, BudgetExceededError, count_calls
from .common import PROMPTS_FILE, RESULT_FILE, AttackCase, AttackResult, FoundPrompt, judge_prompts, model_state
from .genetic import GeneticSettings, genetic_search
from .resurgence import ResurgenceConfig, ResurgenceResult, run_resurgence
from .ringabell import RingABellConfig, concept_direction, ringabell_attack
from .run import UnknownAttackError, attack_config, attack_names, concept_cases, run_attack
from .unlearndiff import UnlearnDiffConfig, unlearndiff_attack

__all__ = [
    "AttackCase", "AttackResult", "Budget", "BudgetExceededError", "FoundPrompt", "GeneticSettings", "PROMPTS_FILE",
    "RESULT_FILE", "ResurgenceConfig", "ResurgenceResult", "RingABellConfig", "UnknownAttackError",
    "UnlearnDiffConfig", "attack_config", "attack_names", "concept_cases", "concept_direction", "count_calls",
    "genetic_search", "judge_prompts", "model_state", "ringabell_attack", "run_attack", "run_resurgence",
    "unlearndiff_attack",
]
