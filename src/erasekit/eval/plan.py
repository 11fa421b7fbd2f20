"""What one evaluation draws: target rows (tiered) and preservation rows, from a benchmark name.

- ``shapes:<scenario>`` (a bench scenario, `erasekit ls scenarios`): the scenario's
  target probes per wording tier and its preservation probes, exactly the prompts and
  seeds of its bench cells; images are read against the scenario's targets and
  ``checked`` attributes (`EvalPlan.task`).
- ``shapes`` (with a Shapes concept): tiers explicit / synonym / implicit, plus
  Shapes preservation prompts (other shapes and colors, adherence read by the detector):
  the probes of the value's task (`tasks.value_task`, `probes.target_probes`), seeds
  0..n-1 per tier and 10000.. for preservation; each row's ``extra`` holds the values
  its prompt names.
- a named benchmark or CSV path: one tier named after the benchmark (first ``n``
  rows), plus COCO-30k preservation prompts (adherence = CLIP score) -- or Shapes
  preservation prompts when evaluating the Shapes world with a Shapes concept.
- ``adversarial``: extra CSVs (e.g. an attack's output: prompt, evaluation_seed,
  case_number) added as tier ``adversarial`` (``adversarial:<stem>`` when several).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..world.vocabulary import TIERS, load_vocabulary
from .benchmarks import Benchmark, BenchmarkFormatError, BenchmarkRow, load_benchmark
from .probes import PRESERVATION_TIER, preservation_probes, target_probes
from .tasks import ShapesTask, TaskError, get_task, value_task

DEFAULT_SHAPES_N = 32
PRESERVE_COCO = "coco"
SCENARIO_PREFIX = "shapes:"


@dataclass
class EvalPlan:
    """Target rows (each with its tier) then preservation rows; ``measure`` says how adherence is read."""

    benchmarks: list[Benchmark]
    preservation: list[BenchmarkRow]
    measure: str | None  # "shapes" (detector reads named values), "clip" (CLIP score) or None
    concept: str | None = None
    notes: list[str] = field(default_factory=list)
    task: ShapesTask | None = None  # a Shapes scenario: targets and adherence read as its task says

    @property
    def targets(self) -> list[BenchmarkRow]:
        return [r for b in self.benchmarks for r in b.rows]

    @property
    def rows(self) -> list[BenchmarkRow]:
        """All rows in image-index order: targets first, then preservation."""
        return self.targets + self.preservation

    @property
    def tiers(self) -> list[str]:
        return list(dict.fromkeys(r.tier for r in self.targets))

    def describe(self) -> dict:
        out = {"benchmarks": [b.describe() for b in self.benchmarks], "tiers": self.tiers,
               "rows_per_tier": {t: sum(r.tier == t for r in self.targets) for t in self.tiers},
               "preservation_rows": len(self.preservation), "preservation_measure": self.measure,
               "concept": self.concept}
        if self.task is not None:
            out["scenario"] = self.task.as_dict()
        return out


def is_shapes_value(concept: str | None) -> bool:
    return concept is not None and concept in load_vocabulary().all_values


def _value_task(concept: str | None):
    try:
        return value_task(concept)
    except TaskError as err:
        raise BenchmarkFormatError(str(err)) from None


def shapes_target_rows(concept: str, n: int) -> list[BenchmarkRow]:
    """``n`` rows per wording tier naming ``concept``; ``tier`` is the wording tier."""
    task = _value_task(concept)
    return [p.row(f"{tier}-{k}") for tier in TIERS for k, p in enumerate(target_probes(task, tier, n))]


def shapes_preservation_rows(concept: str, n: int) -> list[BenchmarkRow]:
    """``n`` explicit prompts naming a shape and a color other than ``concept``."""
    return [p.row(f"preservation-{k}") for k, p in enumerate(preservation_probes(_value_task(concept), n))]


def scenario_task(benchmark: str) -> ShapesTask:
    """The bench scenario ``shapes:<key>`` names; `BenchmarkFormatError` listing them otherwise."""
    try:
        return get_task(benchmark[len(SCENARIO_PREFIX):])
    except TaskError as err:
        raise BenchmarkFormatError(str(err)) from None


def shapes_benchmark(concept: str, n: int) -> Benchmark:
    """The target rows of the Shapes benchmark as a `Benchmark` (preservation rows come separately)."""
    return Benchmark(name="shapes", source="erasekit:tasks.value_task", layout="shapes",
                     rows=shapes_target_rows(concept, n))


def build_plan(benchmark: str, *, concept: str | None = None, n: int | None = None, n_preserve: int = 32,
               category: str | None = None, adversarial: list[str | Path] | None = None,
               shapes_world: bool = False) -> EvalPlan:
    """Assemble the rows of one evaluation (see the module docstring).

    Raises `BenchmarkFormatError` for counts below 1 (``n``) or 0 (``n_preserve``) and for a
    ``category`` on the shapes benchmark, which has none.
    """
    if n is not None and n < 1:
        raise BenchmarkFormatError(f"-n must be at least 1 (got {n})")
    if n_preserve < 0:
        raise BenchmarkFormatError(f"--n-preserve must be at least 0 (got {n_preserve})")
    task = scenario_task(benchmark) if benchmark.startswith(SCENARIO_PREFIX) else None
    if (benchmark == "shapes" or task is not None) and category is not None:
        raise BenchmarkFormatError(f"--category {category!r}: the shapes benchmark has no categories "
                                   "(they filter I2P-style CSVs); drop it")
    if task is not None:
        if concept is not None:
            raise BenchmarkFormatError(f"--concept {concept!r}: scenario {task.key!r} names its own concepts "
                                       f"({', '.join(task.concepts)}); drop it")
        rows = [p.row(f"{tier}-{k}") for tier in TIERS
                for k, p in enumerate(target_probes(task, tier, DEFAULT_SHAPES_N if n is None else n))]
        benchmarks = [Benchmark(name=benchmark, source=f"erasekit:tasks/shapes/{task.key}.yaml", layout="shapes",
                                rows=rows)]
    elif benchmark == "shapes":
        benchmarks = [shapes_benchmark(concept, DEFAULT_SHAPES_N if n is None else n)]
    else:
        benchmarks = [load_benchmark(benchmark, category=category, n=n)]
    adversarial = list(adversarial or [])
    for path in adversarial:
        tier = "adversarial" if len(adversarial) == 1 else f"adversarial:{Path(path).stem}"
        benchmarks.append(load_benchmark(path, n=n, tier=tier))
    preservation: list[BenchmarkRow] = []
    measure = None
    if n_preserve > 0:
        if task is not None:
            keep = preservation_probes(task, n_preserve)
            preservation, measure = [p.row(f"preservation-{k}") for k, p in enumerate(keep)], "shapes"
        elif benchmark == "shapes" or (shapes_world and is_shapes_value(concept)):
            preservation, measure = shapes_preservation_rows(concept, n_preserve), "shapes"
        else:
            coco = load_benchmark(PRESERVE_COCO, n=n_preserve, tier=PRESERVATION_TIER)
            preservation, measure = coco.rows, "clip"
    notes = [note for b in benchmarks for note in b.notes]
    named = ", ".join(task.concepts) if task is not None else concept
    return EvalPlan(benchmarks=benchmarks, preservation=preservation, measure=measure, concept=named, notes=notes,
                    task=task)
