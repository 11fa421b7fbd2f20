"""The benchmark's cells: for each scenario, the original model, then every method variant.

With extra seeds (``BenchPlan.extra_seeds``), each seed-dependent variant is
then measured again per seed (``<variant>@seed<S>`` cells, `BenchRun.replicates`).
Replicate cells already stored for other seeds are read back too, so a report
shows every seed measured so far.

Each finished cell is written at once (`CellStore`); a rerun skips cells whose
fingerprint matches.  The pipeline is always back to its original weights
between cells (methods return deltas; the bench applies and reverts them).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field, replace

from ...generation import SamplingSettings
from ...models.arithmetic import signature
from ...models.delta import apply_delta, revert_delta
from ...training.progress import rich_progress
from .adversarial import AdversarialSource
from .erasing import changed_parameters, erase_scenario, iterations_of, method_run, scope_names, seed_dependent
from ..measure import compare_to_original, image_count, measure_task
from ..probes import Probe
from ..tasks import ShapesTask, get_task
from .machine import machine_line
from .modes import BenchPlan
from .store import CellStore, digest, finite, module_fingerprint, replicate_label

ORIGINAL = "original"


@dataclass
class BenchRun:
    plan: BenchPlan
    results: dict[str, dict[str, dict]] = field(default_factory=dict)
    # scenario -> extra seed -> variant -> cell (the same variants measured with another config seed)
    replicates: dict[str, dict[int, dict[str, dict]]] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    adversarial_note: str = ""
    wall_seconds: float = 0.0
    model_fingerprint: str = ""
    detector_fingerprint: str = ""


class _Bar:
    """A rich progress bar over cells plus a bar for the current cell's images (or nothing)."""

    def __init__(self, enabled: bool, total_cells: int, console=None):
        self.enabled = enabled
        self.total = total_cells
        self.console = console

    def __enter__(self) -> "_Bar":
        if self.enabled:
            self.progress = rich_progress(console=self.console)
            self.progress.__enter__()
            self.cells = self.progress.add_task("bench cells", total=self.total)
            self.step = self.progress.add_task("", total=1)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)

    def stage(self, text: str, total: int = 1) -> None:
        if self.enabled:
            self.progress.reset(self.step, total=total, description=text)

    def images(self, k: int) -> None:
        if self.enabled:
            self.progress.advance(self.step, k)

    def cell_done(self) -> None:
        if self.enabled:
            self.progress.advance(self.cells, 1)


def _reader_fingerprint(reader) -> str:
    model = getattr(reader, "model", None)
    return module_fingerprint(model) if hasattr(model, "named_parameters") else type(reader).__name__


def _adversarial_probes(pipe, scenario: ShapesTask, plan: BenchPlan, source: AdversarialSource | None,
                        store: CellStore, model_fingerprint: str) -> tuple[list[Probe] | None, str]:
    """The scenario's adversarial probes: stored ones when a searching source already found them for
    this model and these settings, else the source's (stored for next time when it searches)."""
    if source is None or plan.n_adversarial <= 0:
        return None, "skipped"
    cache_key = getattr(source, "cache_key", None)
    if cache_key is None:
        return source.probes(pipe, scenario, plan.n_adversarial)
    key = digest({"model": model_fingerprint, **cache_key(scenario, plan.n_adversarial)})
    stored = store.load_probes(scenario.key, key)
    if stored is not None:
        probes, note = stored
        return ([Probe(**p) for p in probes] if probes else None), note
    probes, note = source.probes(pipe, scenario, plan.n_adversarial)
    store.save_probes(scenario.key, key, [asdict(p) for p in probes or []], note)
    return probes, note


def run_bench(pipe, plan: BenchPlan, store: CellStore, settings: SamplingSettings, reader,
              adversarial: AdversarialSource | None = None, adversarial_note: str = "", progress: bool = True,
              console=None, compute: bool = True) -> BenchRun:
    """Measure every (scenario, method) cell of ``plan`` not already stored; return all cells.

    ``compute=False`` only collects stored cells (to rebuild a report).
    """
    t0 = time.perf_counter()
    run = BenchRun(plan, adversarial_note=adversarial_note, model_fingerprint=module_fingerprint(
        pipe.unet, pipe.text_encoder, pipe.vae), detector_fingerprint=_reader_fingerprint(reader))
    base = {"model": run.model_fingerprint, "detector": run.detector_fingerprint, "settings": vars(settings),
            "per_tier": plan.per_tier, "n_preserve": plan.n_preserve, "world": plan.world}
    seeded_methods = [v for v in plan.methods if seed_dependent(v)]
    seeds_of = {key: sorted(set(plan.extra_seeds) | set(store.stored_seeds(key))) for key in plan.scenarios}
    total = sum(1 + len(plan.methods) + len(seeds_of[key]) * len(seeded_methods) for key in plan.scenarios)
    with _Bar(progress and compute, total, console) as bar:
        for key in plan.scenarios:
            scenario = get_task(key)
            # Needed even when only collecting: the probes are part of every cell's fingerprint, so
            # without them a report rebuild would find no stored cell (a searched set is read back).
            adv, note = _adversarial_probes(pipe, scenario, plan, adversarial, store, run.model_fingerprint)
            # the concept specs (anchors, templates, preserve lists) decide what a method does
            scenario_fp = {**base, "scenario": scenario.as_dict(),
                           "concepts": [c.effective_dict() for c in scenario.specs()],
                           "adversarial": [(p.prompt, p.seed, p.target) for p in adv or []]}
            cells = run.results.setdefault(key, {})
            original = _original_cell(pipe, scenario, plan, settings, reader, adv, note, store, digest(scenario_fp),
                                      run, bar, compute)
            if original is None:
                continue
            cells[ORIGINAL] = original
            features = store.load_features(key, original["fingerprint"])
            for variant in plan.methods:
                cell = _method_cell(pipe, scenario, variant, plan, settings, reader, adv, store, scenario_fp,
                                    original, features, cells, run, bar, compute)
                if cell is not None:
                    cells[variant] = cell
            for seed in seeds_of[key]:
                requested = seed in plan.extra_seeds
                seeded = replace(plan, overrides=plan.seeded_overrides(seed))
                seed_cells: dict[str, dict] = {}
                for variant in seeded_methods:
                    cell = _method_cell(pipe, scenario, variant, seeded, settings, reader, adv, store, scenario_fp,
                                        original, features, seed_cells, run, bar, compute and requested,
                                        name=replicate_label(variant, seed), report_missing=requested)
                    if cell is not None:
                        seed_cells[variant] = cell
                if seed_cells:
                    run.replicates.setdefault(key, {})[seed] = seed_cells
    run.wall_seconds = time.perf_counter() - t0
    return run


def _original_cell(pipe, scenario, plan, settings, reader, adv, note, store, fingerprint, run, bar, compute):
    label = f"{scenario.key}/{ORIGINAL}"
    cell = store.load(scenario.key, ORIGINAL, fingerprint)
    if cell is not None and store.load_features(scenario.key, fingerprint) is not None:
        run.reused.append(label)
        bar.cell_done()
        return cell
    if not compute:
        run.missing.append(label)
        return None
    bar.stage(f"{label}: generating", image_count(plan.per_tier, plan.n_preserve, len(adv or [])))
    t = time.perf_counter()
    numbers, features = measure_task(pipe, scenario, plan.per_tier, plan.n_preserve, settings, reader, adv,
                                         progress=bar.images)
    cell = {"scenario": scenario.key, "label": ORIGINAL, "method": None, "fingerprint": fingerprint,
            **numbers, "adversarial": {"measured": bool(adv), "note": note}, "eval_seconds": time.perf_counter() - t,
            "hardware": machine_line()}
    store.save_features(scenario.key, fingerprint, features)
    cell = finite(cell)
    store.save(cell)
    run.computed.append(label)
    bar.cell_done()
    return cell


def _method_cell(pipe, scenario, variant, plan, settings, reader, adv, store, scenario_fp, original, features,
                 cells, run, bar, compute, name: str | None = None, report_missing: bool = True):
    """``variant``'s cell, read back or measured; stored as ``name`` (default: the variant).

    ``cells`` holds the cells measured alongside (same seed), where a twin run is looked up.
    """
    name = name or variant
    label = f"{scenario.key}/{name}"
    runs = [method_run(variant, spec, plan.world, plan.overrides) for spec in scenario.specs()]
    configs = [r.config.model_dump() for r in runs]
    fingerprint = digest({**scenario_fp, "variant": variant, "methods": [r.method for r in runs],
                          "configs": [r.config.fingerprint() for r in runs]})
    cell = store.load(scenario.key, name, fingerprint)
    if cell is not None:
        run.reused.append(label)
        bar.cell_done()
        return cell
    if not compute:
        if report_missing:
            run.missing.append(label)
        return None
    same = {r.same_run_as for r in runs}
    twin = same.pop() if len(same) == 1 else None
    if twin is not None and twin in cells and twin in plan.methods:
        cell = {**cells[twin], "label": name, "fingerprint": fingerprint, "same_run_as": twin}
    else:
        cell = _measure_method(pipe, scenario, variant, plan, settings, reader, adv, original, features, bar)
        cell.update(label=name, fingerprint=fingerprint, same_run_as=None)
    cell["variant"] = variant
    cell["configs"] = configs
    cell = finite(cell)
    store.save(cell)
    run.computed.append(label)
    bar.cell_done()
    return cell


def _measure_method(pipe, scenario, variant, plan, settings, reader, adv, original, features, bar) -> dict:
    bar.stage(f"{scenario.key}/{variant}: erasing")
    outcome = erase_scenario(pipe, variant, scenario, plan.world, plan.overrides)
    scopes, scope_params = scope_names(pipe, variant, outcome.steps)
    changed = changed_parameters(pipe, outcome.delta, scope_params)
    bar.stage(f"{scenario.key}/{variant}: generating", image_count(plan.per_tier, plan.n_preserve, len(adv or [])))
    t = time.perf_counter()
    with _applied(pipe, outcome.delta):
        numbers, erased_features = measure_task(pipe, scenario, plan.per_tier, plan.n_preserve, settings, reader,
                                                    adv, progress=bar.images)
    compared = compare_to_original(numbers, erased_features, original, features)
    return {
        "scenario": scenario.key, "method": outcome.runs[0].method, **numbers, **compared,
        "adversarial": original["adversarial"],
        "erase_seconds": outcome.seconds, "eval_seconds": time.perf_counter() - t,
        "iterations": iterations_of(outcome.steps),
        "iterations_per_concept": [d.manifest.metrics.get("iterations") for d in outcome.steps],
        "composition": "single delta" if len(outcome.steps) == 1 else
                       f"sequential: {len(outcome.steps)} erasures, each on top of the previous, composed into one delta",
        "scopes": scopes, "changed": changed, "memory": outcome.memory,
        "delta_ids": [d.delta_id for d in outcome.steps], "arithmetic": signature(), "hardware": machine_line(),
        "method_metrics": [{k: v for k, v in d.manifest.metrics.items() if v is None or isinstance(v, (int, float, str))}
                           for d in outcome.steps],
    }


@contextlib.contextmanager
def _applied(pipe, delta):
    apply_delta(pipe, delta)
    try:
        yield
    finally:
        revert_delta(pipe, delta)

