"""`erasekit bench` behind the CLI: pick the plan and paths, run the cells, write the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .adversarial import find_source
from .cells import BenchRun, run_bench
from .markdown import write_report, write_summary
from .modes import BenchPlan
from .store import CellStore
from ..robustness import ROBUSTNESS_FOLDERS

FULL_RESULTS = Path("benchmarks/results/bench")
QUICK_RESULTS = Path("benchmarks/results/bench-quick")
FULL_REPORT = Path("BENCHMARKS.md")
README = Path("README.md")  # its results summary (between the markers) follows the full report


@dataclass
class BenchPaths:
    results: Path
    report: Path
    summary: Path | None = None  # a file with the summary markers (README.md) whose summary is rewritten

    @classmethod
    def default(cls, quick: bool, results: Path | None = None, report: Path | None = None) -> "BenchPaths":
        """Full: cells and plots under benchmarks/results/bench, report BENCHMARKS.md, summary in README.md.
        Quick: both under benchmarks/results/bench-quick, no summary (a quick run never overwrites the
        headline report).  A report given elsewhere leaves the README alone."""
        headline = not quick and report is None and results is None
        results = results or (QUICK_RESULTS if quick else FULL_RESULTS)
        return cls(results, report or (results / "BENCHMARKS.md" if quick else FULL_REPORT),
                   README if headline else None)


class NoStoredCellsError(RuntimeError):
    """A report rebuild found no stored cell for the current plan (it would have written an empty report)."""


def run_benchmark(pipe, model_dir: str | None, plan: BenchPlan, paths: BenchPaths, command: str,
                  adversarial_csv: Path | None = None, report_only: bool = False, progress: bool = True,
                  console=None, reader=None, settings=None, report_plan: BenchPlan | None = None
                  ) -> tuple[BenchRun, Path]:
    """Compute ``plan``'s missing cells, then write the report over ``report_plan`` (default ``plan``).

    A run restricted to some scenarios or methods passes the unrestricted plan as ``report_plan``, so
    the report shows every stored cell of the mode (the others read back, not recomputed) instead of
    only the selection.  With ``report_only`` nothing is computed.  The returned run is the report's:
    its ``computed`` lists what this call measured.
    """
    from ...generation import SamplingSettings
    from ..detectors.shapes import ShapesConceptDetector

    settings = settings or SamplingSettings.for_model(model_dir)
    reader = reader or ShapesConceptDetector()
    source, note = find_source(adversarial_csv, plan.adversarial_overrides)
    store = CellStore(paths.results, invocation=command)

    def bench(which: BenchPlan, compute: bool) -> BenchRun:
        return run_bench(pipe, which, store, settings, reader, adversarial=source, adversarial_note=note,
                         progress=progress and compute, console=console, compute=compute)

    shown_plan = report_plan or plan
    computed = None if report_only else bench(plan, True)
    if computed is not None and (shown_plan.scenarios, shown_plan.methods) == (plan.scenarios, plan.methods):
        run = computed
    else:
        run = bench(shown_plan, False)
        if computed is not None:
            run.computed = list(computed.computed)
            run.reused = [c for c in run.reused if c not in computed.computed]
            run.wall_seconds += computed.wall_seconds
    if report_only and run.missing and not run.reused:
        raise NoStoredCellsError(
            f"--report-only found none of the {len(run.missing)} cells it looked for in {paths.results} "
            f"(model, settings, concepts or method configs differ from the stored runs); {paths.report} is "
            "left as it was. Run `erasekit bench` to compute them.")
    robustness = tuple(paths.results.parent / f for f in ROBUSTNESS_FOLDERS) if paths.summary is not None else ()
    report = write_report(run, paths.report, paths.results, command, vars(settings), robustness=robustness)
    if paths.summary is not None:
        write_summary(paths.summary, run)
    return run, report
