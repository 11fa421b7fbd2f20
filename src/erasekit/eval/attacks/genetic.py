"""A seeded genetic algorithm over token-id sequences, run for several independent searches at once.

Each of ``n_searches`` searches keeps a population of ``population`` sequences
of ``length`` ids drawn from ``vocabulary``.  A generation breeds a new
population from the current one -- the ``elite`` best survive unchanged, every
other child takes two parents chosen by tournament (best of ``tournament``
random members), single-point crossover with probability ``crossover_rate``,
then each id is replaced by a random vocabulary id with probability
``mutation_rate`` -- and evaluates it.  ``fitness`` maps (S, P, L) ids to
(S, P) scores, higher is better; the searches never mix, they only share the
batched fitness call.  All randomness comes from one ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .budget import Budget

Fitness = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GeneticSettings:
    population: int = 200
    generations: int = 3000
    mutation_rate: float = 0.25
    crossover_rate: float = 0.5
    elite: int = 2
    tournament: int = 3

    def __post_init__(self):
        if self.population < 2 or not 0 <= self.elite < self.population:
            raise ValueError("need population >= 2 and 0 <= elite < population")
        if not (0 <= self.mutation_rate <= 1 and 0 <= self.crossover_rate <= 1):
            raise ValueError("mutation_rate and crossover_rate are probabilities")
        if self.tournament < 1 or self.generations < 0:
            raise ValueError("need tournament >= 1 and generations >= 0")


@dataclass
class GeneticOutcome:
    best_tokens: torch.Tensor  # (S, L)
    best_fitness: torch.Tensor  # (S,)
    history: list[torch.Tensor] = field(default_factory=list)  # best fitness so far, per evaluation


def _gather(pop: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """pop (S, P, L), index (S, N) -> (S, N, L)."""
    return torch.gather(pop, 1, index.unsqueeze(-1).expand(-1, -1, pop.shape[-1]))


def _tournament(fit: torch.Tensor, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(S, n) indices of tournament winners."""
    s, p = fit.shape
    entrants = torch.randint(p, (s, n, size), generator=g)
    scores = torch.gather(fit.unsqueeze(1).expand(-1, n, -1), 2, entrants)
    return torch.gather(entrants, 2, scores.argmax(dim=2, keepdim=True)).squeeze(2)


def breed(pop: torch.Tensor, fit: torch.Tensor, vocabulary: torch.Tensor, settings: GeneticSettings,
          g: torch.Generator) -> torch.Tensor:
    """The next population (S, P, L) from ``pop`` and its fitness (S, P)."""
    s, p, length = pop.shape
    order = fit.argsort(dim=1, descending=True)
    elites = _gather(pop, order[:, : settings.elite])
    n = p - settings.elite
    mother = _gather(pop, _tournament(fit, n, settings.tournament, g))
    father = _gather(pop, _tournament(fit, n, settings.tournament, g))
    cut = torch.randint(1, max(2, length), (s, n, 1), generator=g)
    crossed = torch.rand((s, n, 1), generator=g) < settings.crossover_rate
    take_father = crossed & (torch.arange(length).view(1, 1, -1) >= cut)
    children = torch.where(take_father, father, mother)
    mutate = torch.rand(children.shape, generator=g) < settings.mutation_rate
    random_ids = vocabulary[torch.randint(len(vocabulary), children.shape, generator=g)]
    children = torch.where(mutate, random_ids, children)
    return torch.cat([elites, children], dim=1)


def genetic_search(fitness: Fitness, vocabulary: torch.Tensor, n_searches: int, length: int,
                   settings: GeneticSettings, generator: torch.Generator, *, budget: Budget | None = None,
                   init: torch.Tensor | None = None,
                   progress: Callable[[int], None] | None = None) -> GeneticOutcome:
    """Run ``settings.generations`` generations; the best sequence ever evaluated per search.

    ``init`` (S, P, L) replaces the random first population.  ``budget.step()``
    is called once per generation (the first population's evaluation is not a
    generation).
    """
    vocabulary = torch.as_tensor(vocabulary, dtype=torch.long)
    shape = (n_searches, settings.population, length)
    pop = init.clone() if init is not None else vocabulary[torch.randint(len(vocabulary), shape, generator=generator)]
    if tuple(pop.shape) != shape:
        raise ValueError(f"init has shape {tuple(pop.shape)}, expected {shape}")
    fit = fitness(pop).detach().float().cpu()
    best = fit.argmax(dim=1)
    outcome = GeneticOutcome(best_tokens=_gather(pop, best[:, None]).squeeze(1).clone(),
                             best_fitness=fit.gather(1, best[:, None]).squeeze(1).clone())
    outcome.history.append(outcome.best_fitness.clone())
    for _ in range(settings.generations):
        if budget is not None:
            budget.step()
        pop = breed(pop, fit, vocabulary, settings, generator)
        fit = fitness(pop).detach().float().cpu()
        value, index = fit.max(dim=1)
        better = value > outcome.best_fitness
        outcome.best_fitness = torch.where(better, value, outcome.best_fitness)
        outcome.best_tokens[better] = _gather(pop, index[:, None]).squeeze(1)[better]
        outcome.history.append(outcome.best_fitness.clone())
        if progress is not None:
            progress(1)
    return outcome
