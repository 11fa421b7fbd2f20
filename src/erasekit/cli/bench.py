"""`erasekit bench`: every method on every Shapes scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app

from . import checks
from .common import console, fail, load_concept, load_model


def _robustness_rows(pipe, model_dir, concepts: list[str], methods: list[str], variants: list[str], paths,
                     attack_seeds: list[int]) -> None:
    """Compute the missing robustness rows of ``methods`` (and their hardened variants) for ``concepts``, and
    their missing runs of both attacks with ``attack_seeds``."""
    from ..concepts.packs import get_concept
    from ..eval.attacks.run import default_detector
    from ..eval.robustness import ROBUSTNESS_RESULTS, run_rows
    from ..generation import SamplingSettings

    settings = SamplingSettings.for_model(model_dir)
    pairs = [(None, None)] + [(m, None) for m in methods] + [(m, h) for h in variants for m in methods]
    for concept in concepts:
        detector, detector_concept = default_detector(get_concept(concept), True)
        run_rows(pipe, concept, pairs, paths.results.parent / ROBUSTNESS_RESULTS / concept, settings, detector,
                 detector_concept, reuse=True, attack_seeds=attack_seeds,
                 announce=lambda label, c=concept: console.print(f"robustness {c}: {label} ..."))


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="Smoke-test mode: 2 scenarios, 8 prompts per tier, ~1/5 of the "
                               "iterations (see BENCHMARKS.md / erasekit.eval.bench.modes)."),
    scenario: Optional[list[str]] = typer.Option(None, "--scenario", help="Only these scenarios (repeatable)."),
    method: Optional[list[str]] = typer.Option(None, "--method", help="Only these method variants (repeatable)."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="Also measure every fine-tuned variant with this "
                                             "method-config seed (repeatable; seed 0 is the main table). The report "
                                             "adds each scenario's spread over seeds."),
    model: str = typer.Option("shapes", help="The Shapes pipeline or a folder exported from it."),
    results: Optional[Path] = typer.Option(None, help="Cells and plots folder (default benchmarks/results/bench, "
                                           "or bench-quick)."),
    report: Optional[Path] = typer.Option(None, help="Report path (default BENCHMARKS.md; quick: in the results folder)."),
    adversarial_csv: Optional[Path] = typer.Option(None, help="Folder of <scenario>.csv attack prompts for the "
                                                   "adversarial tier (default: Ring-A-Bell from erasekit.eval.attacks)."),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild the report from stored cells; compute nothing."),
    robustness: Optional[list[str]] = typer.Option(None, "--robustness", help="Instead of the scenario cells, compute "
                                                   "the robustness rows (both attacks, resurgence) of this concept "
                                                   "(repeatable) for the --method selection, then rebuild the report."),
    harden: Optional[list[str]] = typer.Option(None, "--harden", help="With --robustness: also each method hardened "
                                               "by this variant (rece, adv, proj, or a chain such as adv+rece; repeatable)."),
    attack_seed: Optional[list[int]] = typer.Option(None, "--attack-seed", help="With --robustness: also attack "
                                                    "every erasure row with this attack seed (repeatable); the report "
                                                    "pools each attack's rate over the row's seeds."),
):
    """Every erasure method on every Shapes scenario: resumable cells, BENCHMARKS.md, Pareto plots.

    --scenario/--method choose what to compute; the report always shows every stored cell of the mode.
    """
    import sys

    from ..eval.bench.main import BenchPaths, NoStoredCellsError, run_benchmark
    from ..eval.bench.modes import BenchPlan
    from ..methods.base import list_methods

    for value in seed or []:
        checks.seed_range(value)
    if results is not None:
        checks.out_dir(results, "--results")
    if report is not None:
        checks.out_file(report, "--report", suffixes=(".md",), overwrite=True)
    checks.input_dir(adversarial_csv, "--adversarial-csv")
    whole = BenchPlan.quick() if quick else BenchPlan.full()
    try:
        plan = whole.select(scenario, method).with_extra_seeds(seed)
    except ValueError as err:
        fail(str(err))
    if (harden or attack_seed) and not robustness:
        fail(f"{'--harden' if harden else '--attack-seed'} needs --robustness CONCEPT")
    from ..methods.harden import variant_chain

    for variant in harden or []:
        try:
            variant_chain(variant)
        except ValueError as err:
            fail(str(err))
    if any(Path(c).suffix for c in robustness or []):
        fail("--robustness takes concept names from the packs (see `erasekit concepts`), not files")
    # validated against the packs; rows are stored and measured under the pack concept's bare name ("red")
    concepts = [load_concept(c).name.rsplit("/", 1)[-1] for c in robustness or []]
    pipe, path = load_model(model, "cpu")
    paths = BenchPaths.default(quick, results, report)
    command = " ".join(["erasekit", *sys.argv[1:]])
    if concepts:
        from ..eval.attack_seeds import StaleDeltaError
        from ..eval.robustness import StoredRowMismatch

        try:
            _robustness_rows(pipe, path, concepts, list(method or list_methods()), harden or [], paths,
                             attack_seed or [])
        except (StoredRowMismatch, StaleDeltaError) as err:
            fail(str(err))
        report_only = True
    try:
        run, written = run_benchmark(pipe, path, plan, paths, command, adversarial_csv=adversarial_csv,
                                     report_only=report_only, console=console, report_plan=whole)
    except NoStoredCellsError as err:
        fail(str(err))
    console.print(f"{len(run.computed)} cells computed, {len(run.reused)} reused, {len(run.missing)} missing; "
                  f"{run.wall_seconds / 60:.1f} min; wrote {written} and plots in {paths.results}")

