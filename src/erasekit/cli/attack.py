"""`erasekit attack` and `erasekit resurgence`: robustness of an erased model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app

from . import checks
from .common import config_overrides, console, fail, load_concept, load_delta, load_model, note, progress_bar


def _attack_cases(path: Path):
    from ..eval.attacks import AttackCase
    from ..eval.benchmarks import BenchmarkFormatError, load_benchmark

    try:
        rows = load_benchmark(path).rows
    except BenchmarkFormatError as err:
        fail(str(err))
    return [AttackCase(r.case_number, r.prompt, r.seed, r.guidance) for r in rows]


@app.command()
def attack(
    attack_name: str = typer.Option(..., "--attack", help="unlearndiff (white-box) or ringabell (text encoder only)."),
    concept: str = typer.Option(..., help="Concept name (see `erasekit concepts`) or a YAML/JSON concept file."),
    out: Path = typer.Option(..., help="Output folder: adversarial.csv (benchmark layout) + attack.json."),
    model: str = typer.Option("shapes"),
    delta: Optional[Path] = typer.Option(None, help="Run folder of the erasure under attack (omit: the model as loaded)."),
    budget: Optional[int] = typer.Option(None, help="Optimisation steps (unlearndiff) / generations (ringabell)."),
    n: int = typer.Option(16, "--n", "-n", help="Cases: prompts of the concept with seeds 0..n-1."),
    prompts: Optional[Path] = typer.Option(None, help="Benchmark CSV of cases to attack instead (prompt, evaluation_seed)."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file of attack config overrides."),
    seed: Optional[int] = typer.Option(None),
    detector: Optional[str] = typer.Option(None, help="shapes, silhouette, nudenet or q16 (default: from the concept)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps of the judged images (default: the model card's)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance of the judged images (default: the model card's)."),
    device: str = typer.Option("cpu"),
):
    """Adversarial prompt attack on an erased model; success = the detector finds the concept."""
    from ..eval.attacks import UnknownAttackError, run_attack
    from ..eval.attacks.run import ATTACKS
    from ..eval.detectors import DetectorUnavailableError, UnknownDetectorError, get_detector
    from ..generation import SamplingSettings

    if attack_name not in ATTACKS:
        fail(str(ATTACKS.unknown(attack_name)))
    checks.at_least(budget, 1, "--budget")
    checks.at_least(n, 1, "-n")
    checks.at_least(steps, 1, "--steps")
    checks.seed_range(seed)
    guidance_note = checks.guidance_value(guidance)
    checks.out_dir(out)
    checks.input_dir(delta, "--delta")
    checks.input_file(prompts, "--prompts")
    overrides = config_overrides(config, seed=seed, **{ATTACKS.get(attack_name).budget_field: budget})
    spec = load_concept(concept)
    if guidance_note:
        note(guidance_note)
    pipe, path = load_model(model, device)
    d = load_delta(delta)
    if d is not None and (problems := d.mismatches(pipe)):
        fail(f"delta {delta} does not fit model {model}: {'; '.join(problems[:3])}")
    settings = SamplingSettings.for_model(path, steps=steps, guidance_scale=guidance)
    cases = _attack_cases(prompts) if prompts else None
    try:
        det = get_detector(detector) if detector else None
        with progress_bar() as bar:
            task = bar.add_task(f"{attack_name} attack", total=None)
            result = run_attack(pipe, attack_name, spec, delta=d, config=overrides, cases=cases, n_cases=n,
                                detector=det, settings=settings, out=out, model=model, delta_path=delta,
                                progress=lambda k: bar.advance(task, k))
    except (UnknownAttackError, DetectorUnavailableError, UnknownDetectorError, ValueError, NotImplementedError) as err:
        fail(str(err).splitlines()[0])
    ref = result.settings["reference"]
    console.print(f"{attack_name} on {spec.name}: success {result.success_rate:.3f} over {len(result.found)} prompts "
                  f"(plain prompts on this model: {ref.get('case_prompts_rate_erased', float('nan')):.3f}); "
                  f"{result.budget['steps']}/{result.budget['max_steps']} {result.budget['unit']}, {result.seconds:.0f}s")
    console.print(f"wrote {out / 'adversarial.csv'}, {out / 'attack.json'} "
                  f"(evaluate: erasekit eval --benchmark {out / 'adversarial.csv'} --concept ... --delta ...)")


@app.command()
def resurgence(
    delta: Path = typer.Option(..., help="Run folder of the erasure (never modified)."),
    concept: str = typer.Option(..., help="The erased concept."),
    out: Path = typer.Option(..., help="Output folder: resurgence.json (+ resurged/ delta on the base model)."),
    model: str = typer.Option("shapes"),
    steps: Optional[int] = typer.Option(None, help="Fine-tuning steps on benign data (default: the preset's)."),
    lr: Optional[float] = typer.Option(None),
    data: Optional[Path] = typer.Option(None, help="Image folder with metadata.csv/jsonl (file_name, text); "
                                                   "default on Shapes: renders of the other values."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file of resurgence config overrides."),
    seed: Optional[int] = typer.Option(None),
    detector: Optional[str] = typer.Option(None, help="shapes, silhouette, nudenet or q16 (default: from the concept)."),
    device: str = typer.Option("cpu"),
):
    """Fine-tune the erased model briefly on benign data, then measure the target rate again."""
    from ..eval.attacks import run_resurgence
    from ..eval.detectors import DetectorUnavailableError, UnknownDetectorError, get_detector
    from ..generation import SamplingSettings

    checks.at_least(steps, 1, "--steps")
    checks.positive_number(lr, "--lr")
    checks.seed_range(seed)
    checks.input_dir(delta, "--delta")
    checks.input_dir(data, "--data")
    if checks.same_path(out, delta):
        fail(f"--out {out} is the --delta folder; choose another folder (the erasure is never modified)")
    checks.out_dir(out)
    overrides = config_overrides(config, steps=steps, lr=lr, seed=seed, data=str(data) if data else None)
    spec = load_concept(concept)
    pipe, path = load_model(model, device)
    d = load_delta(delta)
    if (problems := d.mismatches(pipe)):
        fail(f"delta {delta} does not fit model {model}: {'; '.join(problems[:3])}")
    try:
        det = get_detector(detector) if detector else None
        with progress_bar() as bar:
            task = bar.add_task("resurgence fine-tuning", total=overrides.get("steps"))
            res = run_resurgence(pipe, d, spec, overrides, detector=det, settings=SamplingSettings.for_model(path),
                                 out=out, delta_path=delta, progress=lambda k: bar.advance(task, k))
    except (DetectorUnavailableError, UnknownDetectorError, ValueError, NotImplementedError) as err:
        fail(str(err).splitlines()[0])
    for tier in res.target_rate_before:
        console.print(f"{tier:9s} target rate {res.target_rate_before[tier]:.3f} -> {res.target_rate_after[tier]:.3f}")
    console.print(f"delta files unchanged: {res.delta_files_unchanged}; wrote {out / 'resurgence.json'}")

