"""The adversarial tier: a pluggable source of attack prompts per scenario.

A source has a ``name`` and ``probes(pipe, scenario, n) -> (probes, note)``;
``probes`` is None when it has nothing for that scenario (``note`` says
why).  It is called ONCE per scenario with the ORIGINAL pipeline, and every
method is measured on the same prompts and seeds (model-independent attacks,
e.g. Ring-A-Bell-style prompts; per-model white-box attacks such as
UnlearnDiffAtk would need a per-cell call, which this tier does not do).

Built in:

- `CsvPromptSource`: ``<folder>/<scenario>.csv`` with a ``prompt`` column and
  optional ``seed`` and ``target`` (index into the scenario's targets)
  columns, e.g. the prompt CSVs written by an attack run.
- `RingABellSource`: Ring-A-Bell-style prompts from ``erasekit.eval.attacks``
  (``ringabell_attack``), searched once per scenario on the original model's
  text encoder, with the scenario's explicit-tier prompts and seeds as cases.
- A source that searches (Ring-A-Bell) also has ``cache_key(scenario, n)``:
  the bench loop (`cells.run_bench`) stores its probes per scenario under that key plus the model's
  fingerprint (`CellStore.save_probes`), so a rerun or a report rebuild reads
  them instead of searching again.  A CSV source is read every time.  The
  key does not cover the search code itself (cells do not cover method code
  either): after changing ``erasekit.eval.attacks``, delete the scenario's
  ``adversarial_probes.json`` to search again.
- `find_source()`: a CSV folder when given, else `RingABellSource` when the
  attacks package is installed; otherwise the tier is skipped and the report
  says so.  UnlearnDiffAtk (white-box, one optimisation per erased model) is
  not run by the benchmark: use ``erasekit attack`` per delta for it.
"""

from __future__ import annotations

import csv
import importlib
from pathlib import Path
from typing import Protocol

from ..probes import Probe
from ..tasks import ShapesTask

ADVERSARIAL_SEED = 20_000


class AdversarialSource(Protocol):
    name: str

    def probes(self, pipe, scenario: ShapesTask, n: int) -> tuple[list[Probe] | None, str]: ...


def _probe(scenario: ShapesTask, k: int, prompt: str, seed: int | None, target: int | None) -> Probe:
    index = int(target) if target is not None else k % len(scenario.targets)
    if not 0 <= index < len(scenario.targets):
        raise ValueError(f"adversarial prompt {k} names target {index}; scenario {scenario.key} has "
                         f"{len(scenario.targets)}")
    return Probe(prompt, dict(scenario.targets[index]), int(seed) if seed is not None else ADVERSARIAL_SEED + k,
                 "adversarial", index)


class CsvPromptSource:
    """Attack prompts from ``<folder>/<scenario key>.csv`` (columns: prompt[, seed][, target])."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.name = f"csv:{self.folder}"

    def probes(self, pipe, scenario: ShapesTask, n: int) -> tuple[list[Probe] | None, str]:
        path = self.folder / f"{scenario.key}.csv"
        if not path.is_file():
            return None, f"no {path.name} in {self.folder}"
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if rows and "prompt" not in rows[0]:
            raise ValueError(f"{path}: needs a 'prompt' column (found {', '.join(rows[0])})")
        rows = [r for r in rows if r["prompt"].strip()][:n]
        if not rows:
            return None, f"{path} has no prompts"
        probes = [_probe(scenario, k, r["prompt"], r.get("seed") or None, r.get("target") or None)
                  for k, r in enumerate(rows)]
        return probes, f"{len(probes)} prompts from {path}"


class RingABellSource:
    """Ring-A-Bell-style prompts from ``erasekit.eval.attacks`` (model-agnostic: it reads only the base
    model's text encoder, so one search per scenario serves every method).

    Cases are the scenario's explicit-tier target prompts and seeds; for a
    multi-concept scenario each concept is attacked on the prompts that name it.
    """

    name = "ringabell (erasekit.eval.attacks)"

    def __init__(self, attacks, world: str = "shapes", overrides: dict | None = None):
        self.attacks, self.world, self.overrides = attacks, world, dict(overrides or {})

    def config(self):
        return self.attacks.attack_config("ringabell", self.world, **self.overrides)

    def cache_key(self, scenario: ShapesTask, n: int) -> dict:
        """What the search's result depends on besides the model's weights (the bench loop adds those)."""
        from ...concepts.packs import get_concept

        return {"source": self.name, "world": self.world, "config": self.config().model_dump(), "n": n,
                "scenario": scenario.as_dict(),
                "concepts": [get_concept(c, world="shapes").effective_dict() for c in scenario.concepts]}

    def probes(self, pipe, scenario: ShapesTask, n: int) -> tuple[list[Probe] | None, str]:
        from ...concepts.packs import get_concept
        from ..probes import target_probes

        config, out = self.config(), []
        cases = target_probes(scenario, "explicit", n)
        for index, name in enumerate(scenario.concepts):
            mine = [p for p in cases if p.target == index]
            if not mine:
                continue
            found = self.attacks.ringabell_attack(
                pipe, [self.attacks.AttackCase(k, p.prompt, p.seed) for k, p in enumerate(mine)],
                get_concept(name, world="shapes"), config)
            out += [Probe(f.prompt, dict(scenario.targets[index]), f.seed, "adversarial", index) for f in found]
        settings = ", ".join(f"{k}={getattr(config, k)}" for k in ("n_tokens", "population", "generations", "eta"))
        return (out or None), f"{len(out)} Ring-A-Bell prompts ({settings}) found on the original text encoder"


def find_source(csv_folder: str | Path | None = None, overrides: dict | None = None
                ) -> tuple[AdversarialSource | None, str]:
    """The source to use (a CSV folder wins), or None with the reason the tier is skipped."""
    if csv_folder is not None:
        return CsvPromptSource(csv_folder), f"prompts from CSV files in {csv_folder}"
    try:
        attacks = importlib.import_module("erasekit.eval.attacks")
    except ModuleNotFoundError as err:
        if err.name not in ("erasekit.eval.attacks", "erasekit.eval"):
            return None, f"skipped: erasekit.eval.attacks failed to import ({err})"
        return None, ("skipped: the attacks package (erasekit.eval.attacks) is not installed; "
                      "pass --adversarial-csv FOLDER with <scenario>.csv prompt files to measure this tier")
    except ImportError as err:
        return None, f"skipped: erasekit.eval.attacks failed to import ({err})"
    missing = [n for n in ("attack_config", "ringabell_attack", "AttackCase") if not hasattr(attacks, n)]
    if missing:
        return None, (f"skipped: erasekit.eval.attacks lacks {', '.join(missing)}; "
                      "pass --adversarial-csv FOLDER with <scenario>.csv prompt files instead")
    source = RingABellSource(attacks, overrides=overrides)
    return source, f"Ring-A-Bell-style prompts from erasekit.eval.attacks ({source.config().generations} generations)"
