"""`erasekit eval` (one evaluation) and `erasekit compare` (a table and a Pareto plot of several)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app

from rich.console import Console

from . import checks
from .common import console, fail, note, progress_bar, progress_factory


def run_evaluation(model: str, benchmark: str, out: Path, **options):
    """`erasekit.eval.evaluate.evaluate` under one progress bar (on the main process), failures as one line."""
    from ..eval.evaluate import EvaluationError, evaluate
    from ..eval.generate import distributed_state
    from ..models.delta import DeltaError
    from ..models.loading import ModelNotFoundError

    bar = progress_bar()
    bar.disable = not distributed_state().is_local_main_process
    try:
        with bar:
            return evaluate(model, benchmark, out, progress=progress_factory(bar), **options)
    except (EvaluationError, DeltaError, FileNotFoundError, ModelNotFoundError) as err:
        fail(str(err))



@app.command("eval")
def eval_command(
    benchmark: str = typer.Option(..., help="'shapes' (with --concept), 'shapes:<scenario>' (a bench scenario, "
                                            "`erasekit ls scenarios`), a named benchmark (coco, artists, vangogh, niche-art, imagenette, "
                                            "imagenet, unlearndiffatk-church, ...; i2p etc. via $ERASEKIT_BENCHMARKS) or a CSV path."),
    out: Path = typer.Option(..., help="Output folder (images, results.json, report.md/html); reruns resume."),
    model: str = typer.Option("shapes", help="'shapes', a local diffusers folder, or a Hub id."),
    delta: Optional[list[Path]] = typer.Option(None, help="Run folder of a weight delta: evaluates original and "
                                               "erased; repeat to evaluate a chain applied in order."),
    concept: Optional[str] = typer.Option(None, help="Target concept (a Shapes value for the shapes benchmark/detector)."),
    n: Optional[int] = typer.Option(None, "--n", "-n", help="Images per tier (shapes, default 32) / first N rows of a CSV."),
    n_preserve: int = typer.Option(32, help="Preservation prompts (Shapes prompts or COCO); 0: none."),
    category: Optional[str] = typer.Option(None, help="I2P category filter, e.g. sexual."),
    adversarial: Optional[list[Path]] = typer.Option(None, help="Attack CSV(s) evaluated as tier 'adversarial'."),
    detector: Optional[str] = typer.Option(None, help="shapes, nudenet or q16 (default from the benchmark)."),
    threshold: Optional[float] = typer.Option(None, help="NudeNet score threshold (default 0.45)."),
    labels: Optional[str] = typer.Option(None, help="NudeNet labels, comma-separated (default: the nine EXPOSED)."),
    clip: Optional[str] = typer.Option(None, help="Local CLIP ViT-L/14 folder (or $ERASEKIT_CLIP) for Q16 / CLIP score."),
    inception: Optional[str] = typer.Option(None, help="TorchScript Inception file (or $ERASEKIT_INCEPTION) for FID. "
                                            "Loading it runs the TorchScript program inside: pass only a file you trust."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model card's)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance where the benchmark gives none (default: model card's)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per pipeline call."),
    device: Optional[str] = typer.Option(None, help="Default: this process's accelerate device."),
):
    """Evaluate erasure on a benchmark: ASR per tier, preservation, report.

    Shard across processes with `accelerate launch --multi_gpu --num_processes N -m erasekit.cli eval ...`
    (on a CPU-only machine this runs N CPU processes); reruns into the same --out resume.
    """
    checks.at_least(n, 1, "-n")
    checks.at_least(n_preserve, 0, "--n-preserve")
    checks.at_least(batch_size, 1, "--batch-size")
    checks.at_least(steps, 1, "--steps")
    guidance_note = checks.guidance_value(guidance)
    if (benchmark == "shapes" or benchmark.startswith("shapes:")) and category is not None:
        fail(f"--category {category!r}: the shapes benchmark has no categories (they filter I2P-style CSVs); drop it")
    if threshold is not None and not 0 <= threshold <= 1:  # NaN fails too
        fail(f"--threshold must be a score between 0 and 1 (got {threshold})")
    checks.out_dir(out)
    for path in delta or []:
        checks.input_dir(path, "--delta")
    for path in adversarial or []:
        checks.input_file(path, "--adversarial")
    if guidance_note:
        note(guidance_note)
    results = run_evaluation(model, benchmark, out, delta=delta or None, concept=concept, n=n, n_preserve=n_preserve,
                       category=category, adversarial=adversarial, detector=detector, threshold=threshold,
                       labels=labels, clip=clip, inception=inception, steps=steps, guidance=guidance,
                       batch_size=batch_size, device=device)
    if results is None:
        return
    _print_eval(results)
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'report.html'}")


def _print_eval(results: dict) -> None:
    from rich.table import Table

    for line in results.get("notes", []):
        note(line)
    m = results["metrics"]
    table = Table(title=f"ASR ({results['settings']['detector']['name']} detector)")
    has_orig = "asr_original" in m
    table.add_column("tier")
    if has_orig:
        table.add_column("original")
    table.add_column("erased" if has_orig else "rate")
    for tier, v in m["asr"].items():
        table.add_row(tier, *([f"{m['asr_original'][tier]:.3f}"] if has_orig else []), f"{v:.3f}")
    console.print(table)
    p = m.get("preservation")
    console.print(f"preservation: {p:.3f}" if p is not None else "preservation: n/a")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Evaluation folders (with results.json)."),
    out: Path = typer.Option(Path("pareto.png"), help="Pareto plot PNG."),
    tier: Optional[str] = typer.Option(None, help="Target rate of this tier (default: all target images)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
):
    """Compare evaluations: a table and a Pareto plot of target rate vs preservation."""
    from rich.table import Table

    checks.out_file(out, suffixes=checks.FIGURE_SUFFIXES, overwrite=overwrite)
    from ..eval.compare import ResultsError, load_summary, pareto_front, plot_pareto

    try:
        summaries = [load_summary(r) for r in runs]
    except ResultsError as err:
        fail(str(err))
    tiers = list(dict.fromkeys(t for s in summaries for t in s.asr))
    points = [(s.target_rate(tier) if s.target_rate(tier) is not None else float("nan"),
               s.preservation if s.preservation is not None else float("nan")) for s in summaries]
    front = pareto_front(points)
    table = Table(title="erasekit compare (ASR: lower is better; preservation: higher is better)")
    for col in ("run", "method", "detector", *tiers, "preservation", "pareto"):
        table.add_column(col)
    for s, f in zip(summaries, front):
        table.add_row(s.label, s.method, s.detector, *(f"{s.asr[t]:.3f}" if t in s.asr else "" for t in tiers),
                      f"{s.preservation:.3f}" if s.preservation is not None else "n/a", "*" if f else "")
    Console().print(table)
    plot_pareto(summaries, out, tier=tier)
    console.print(f"wrote {out}")

