"""erasekit command-line interface."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Erase concepts from text-to-image diffusion models.")
console = Console(stderr=True)


class UserError(Exception):
    """An error whose message is shown to the user as one line, without a traceback."""


def _quiet_libraries() -> None:
    """Library chatter (hub retries, deprecations, torchvision fallbacks) stays off the terminal."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("huggingface_hub", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
    except ImportError:
        pass


@app.callback()
def _root() -> None:
    _quiet_libraries()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code=2)


def _load(model: str, device: str, family: Optional[str] = None):
    from .models.loading import ModelNotFoundError, load_pipeline, resolve_model_path

    try:
        return load_pipeline(model, device=device, family=family), resolve_model_path(model)
    except ModelNotFoundError as err:
        _fail(str(err))


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)


@app.command()
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Prompt (repeatable)."),
    model: str = typer.Option("shapes", help="'shapes', a local diffusers folder, or a Hub id."),
    n: int = typer.Option(4, "-n", help="Images per prompt."),
    seed: int = typer.Option(0, help="Seed of the first image; image k uses seed+k."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model card's)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default: the model card's)."),
    out: Path = typer.Option(Path("grid.png"), help="Output grid PNG."),
    delta: Optional[Path] = typer.Option(None, help="Run folder of a weight delta to apply first."),
    device: str = typer.Option("cpu"),
):
    """Generate an image grid (one row per prompt)."""
    from .generation import SamplingSettings, generate as run, image_grid

    if any(not p.strip() for p in prompt):
        _fail("empty prompt")
    pipe, path = _load(model, device)
    _apply_delta_arg(pipe, delta)
    settings = SamplingSettings.for_model(path, steps=steps, guidance_scale=guidance)
    prompts = [p for p in prompt for _ in range(n)]
    seeds = [seed + k for _ in prompt for k in range(n)]
    with _progress() as bar:
        task = bar.add_task("generating", total=len(prompts))
        images = run(pipe, prompts, seeds, settings, progress=lambda k: bar.advance(task, k))
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols=n).save(out)
    console.print(f"wrote {out} ({len(images)} images, {settings.steps} steps, guidance {settings.guidance_scale})")


def _apply_delta_arg(pipe, delta: Optional[Path]):
    if delta is None:
        return None
    from .models.delta import DeltaError, WeightDelta, apply_delta

    try:
        d = WeightDelta.load(delta)
        apply_delta(pipe, d)
    except (DeltaError, FileNotFoundError) as err:
        _fail(str(err))
    return d


def _concept(name: str):
    from .concepts.packs import UnknownConceptError, get_concept
    from .concepts.spec import ConceptSpec, ConceptSpecError

    try:
        if Path(name).suffix in (".yaml", ".yml", ".json") and Path(name).exists():
            return ConceptSpec.from_file(name)
        return get_concept(name)
    except (UnknownConceptError, ConceptSpecError) as err:
        _fail(str(err))


@app.command()
def erase(
    method: str = typer.Option(..., help="Erasure method (see `erasekit methods`)."),
    concept: str = typer.Option(..., help="Concept name (see `erasekit concepts`) or a YAML/JSON concept file."),
    out: Path = typer.Option(..., help="Run folder: delta.safetensors + manifest.json."),
    anchor: Optional[str] = typer.Option(None, help="Replace the concept's anchor (safe counterpart) for every "
                                         "target, e.g. 'shape' for a neutral anchor in the Shapes world."),
    model: str = typer.Option("shapes"),
    preset: Optional[str] = typer.Option(None, help="Config preset (default: 'shapes' on the Shapes model, else 'sd')."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file of config overrides."),
    start_from: Optional[Path] = typer.Option(None, "--from", help="Apply this delta first (methods compose)."),
    seed: Optional[int] = typer.Option(None),
    device: str = typer.Option("cpu"),
    family: Optional[str] = typer.Option(None, help="sd1, sd2 or sdxl: pipeline class of a single-file checkpoint "
                                         "(default: read from its tensor names), checked for folders."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the estimated peak memory and time on one "
                                 "24 GB GPU and exit without loading weights or training."),
):
    """Erase a concept; writes the weight delta and its manifest."""
    from .methods.base import UnknownMethodError, get_method
    from .models.loading import is_shapes_world

    try:
        info = get_method(method)
    except UnknownMethodError as err:
        _fail(str(err))
    spec = _concept(concept)
    if anchor is not None:
        spec = spec.model_copy(update={"anchor": anchor, "target_anchors": {}})
    if dry_run:
        _print_estimate(info, spec, model, preset, config, seed)
        return
    from .methods import data_parallel

    dp = data_parallel.current()  # started by `accelerate launch` with several processes
    if dp is not None and device.startswith("cuda"):
        device = str(dp.device)  # one GPU per process
    pipe, _ = _load(model, device, family)
    prior = _apply_delta_arg(pipe, start_from)
    if prior is not None and anchor is None:
        spec = _anchor_off_erased(spec, prior)
    world = "shapes" if is_shapes_world(pipe) else "sd"
    cfg = _method_config(info, preset, world, config, seed)
    preset = preset or world
    if dp is None or dp.is_main:
        suffix = f", data-parallel over {dp.num_processes} processes" if dp is not None else ""
        console.print(f"erasing [bold]{spec.name}[/] with [bold]{method}[/] (preset {preset}{suffix})")
    delta = info.erase(pipe, spec, cfg)
    if dp is not None and not dp.is_main:
        return  # every replica holds the same delta (checked by the trainer); process 0 writes it
    delta.save(out)
    m = delta.manifest
    console.print(f"wrote {out}: {len(delta.tensors)} tensors, {m.wall_time_s:.1f}s")


def _method_config(info, preset: Optional[str], world: str, config: Optional[Path], seed: Optional[int]):
    """The method's config: a ``--preset`` named by the user must exist; without one, the world's preset or SD's."""
    overrides = _overrides(config, seed=seed)
    if preset is None:
        return info.config_cls.for_world(world, **overrides)
    known = ("sd", *info.config_cls.PRESETS)
    if preset not in known:
        _fail(f"{info.name} has no preset {preset!r}; presets: {', '.join(known)}")
    return info.config_cls.preset(preset, **overrides)


def _anchor_off_erased(spec, prior):
    """``spec`` with its anchor moved off the concepts ``prior`` (a ``--from`` delta) already erased."""
    from .concepts.joint import AnchorCollisionError, erased_concepts, separate_anchors
    from .concepts.spec import ConceptSpecError

    try:
        done = erased_concepts(prior.manifest.config)
        (moved,) = separate_anchors([spec], already_erased=done)
    except (AnchorCollisionError, ConceptSpecError) as err:
        _fail(str(err))
    if moved.anchor != spec.anchor or moved.target_anchors != spec.target_anchors:
        console.print(f"anchor {spec.anchor!r} is erased by the --from delta; using {moved.anchor!r}")
    return moved


def _print_estimate(info, spec, model: str, preset: Optional[str], config: Optional[Path], seed: Optional[int]):
    from .models.estimate import estimate

    cfg = _method_config(info, preset, "shapes" if model == "shapes" else "sd", config, seed)
    try:
        result = estimate(info.name, model, cfg, kind=spec.kind)
    except (ValueError, RuntimeError) as err:
        _fail(str(err).splitlines()[0])
    typer.echo(result.summary())


@app.command()
def methods():
    """List the registered erasure methods."""
    from .methods.base import get_method, list_methods

    for name in list_methods():
        console.print(f"{name:10s} {get_method(name).summary}", soft_wrap=True)


@app.command()
def concepts(pack: Optional[str] = typer.Argument(None)):
    """List concept packs, or the concepts of one pack."""
    from .concepts.packs import list_concepts, list_packs

    if pack is None:
        for p in list_packs():
            console.print(f"{p:8s} {len(list_concepts(p))} concepts")
        return
    if pack not in list_packs():
        _fail(f"unknown pack {pack!r} (packs: {', '.join(list_packs())})")
    for name in list_concepts(pack):
        console.print(name)


@app.command()
def export(
    delta: Path = typer.Option(..., help="Run folder with delta.safetensors + manifest.json."),
    out: Path = typer.Option(..., help="Output diffusers pipeline folder."),
    model: str = typer.Option("shapes"),
):
    """Write a full diffusers pipeline folder with the delta merged."""
    from .models.delta import DeltaError, WeightDelta, export_merged

    pipe, _ = _load(model, "cpu")
    try:
        export_merged(pipe, WeightDelta.load(delta), out)
    except (DeltaError, FileExistsError) as err:
        _fail(str(err))
    console.print(f"wrote {out}")


@app.command()
def adherence(
    model: str = typer.Option("shapes"),
    per_tier: int = typer.Option(64, help="Images per wording tier."),
    seed: int = typer.Option(0),
    steps: Optional[int] = typer.Option(None),
    guidance: Optional[float] = typer.Option(None),
    out: Optional[Path] = typer.Option(None, help="Write the table as JSON here."),
):
    """Prompt adherence of a Shapes-world model, measured by the detector, per wording tier."""
    from .eval.shapes_adherence import measure_adherence
    from .generation import SamplingSettings

    pipe, path = _load(model, "cpu")
    settings = SamplingSettings.for_model(path, steps=steps, guidance_scale=guidance)
    with _progress() as bar:
        task = bar.add_task("adherence", total=per_tier * 3)
        table = measure_adherence(pipe, per_tier=per_tier, seed=seed, settings=settings, progress=lambda k: bar.advance(task, k))
    for tier, row in table["tiers"].items():
        console.print(f"{tier:9s} " + "  ".join(f"{a} {v:.3f}" for a, v in row.items()))
    if out:
        out.write_text(json.dumps(table, indent=2))


# ------------------------------------------------------------------ evaluation
NUDITY_BENCHMARKS = ("i2p", "unlearndiffatk-nudity", "mma", "ring-a-bell", "p4d")


def _default_detector(benchmark: str, concept: Optional[str], shapes_world: bool, category: Optional[str]) -> str:
    from .eval.plan import is_shapes_value

    if benchmark == "shapes" or (shapes_world and is_shapes_value(concept)):
        return "shapes"
    if benchmark in NUDITY_BENCHMARKS or category == "sexual" or concept == "nudity":
        return "nudenet"
    _fail(f"choose a detector for benchmark {benchmark!r} with --detector (shapes, nudenet, q16)")


def _detector_options(name: str, threshold: Optional[float], labels: Optional[str], clip) -> dict:
    if name != "nudenet" and (threshold is not None or labels):
        _fail("--threshold and --labels are settings of the nudenet detector")
    if name == "nudenet":
        opts = {}
        if threshold is not None:
            opts["threshold"] = threshold
        if labels:
            opts["labels"] = [x.strip() for x in labels.split(",") if x.strip()]
        return opts
    if name == "q16":
        return {"clip": clip}
    return {}


def _load_delta(path: Optional[Path]):
    if path is None:
        return None
    from .models.delta import DeltaError, WeightDelta

    try:
        return WeightDelta.load(path)
    except (DeltaError, FileNotFoundError) as err:
        _fail(str(err))


def _progress_factory(bar):
    def make(label: str, total: int):
        task = bar.add_task(label, total=total)
        return lambda k: bar.advance(task, k)

    return make


def evaluate(model: str, benchmark: str, out: Path, *, delta: Optional[Path] = None, concept: Optional[str] = None,
             n: Optional[int] = None, n_preserve: int = 32, category: Optional[str] = None,
             adversarial: Optional[list[Path]] = None, detector: Optional[str] = None,
             threshold: Optional[float] = None, labels: Optional[str] = None, clip: Optional[str] = None,
             inception: Optional[str] = None, steps: Optional[int] = None, guidance: Optional[float] = None,
             batch_size: Optional[int] = None, device: Optional[str] = None, pipe=None, model_path=None):
    """Run one evaluation (used by `eval` and `demo`); returns the results on the main process, else None."""
    from .eval.benchmarks import BenchmarkFormatError
    from .eval.clip import ClipEncoder, ClipUnavailableError
    from .eval.detectors import DetectorUnavailableError, UnknownDetectorError, get_detector
    from .eval.generation_runner import GenerationMismatchError, distributed_state
    from .eval.plan import build_plan
    from .eval.runner import run_eval
    from .generation import SamplingSettings
    from .models.loading import is_shapes_world

    state = distributed_state()
    if pipe is None:
        pipe, model_path = _load(model, device or str(state.device))
    shapes_world = is_shapes_world(pipe)
    d = _load_delta(delta)
    if d is not None and (problems := d.mismatches(pipe)):
        _fail(f"delta {delta} does not fit model {model}: {'; '.join(problems[:3])}")
    notes: list[str] = []
    try:
        plan = build_plan(benchmark, concept=concept, n=n, n_preserve=n_preserve, category=category,
                          adversarial=[str(a) for a in adversarial or []], shapes_world=shapes_world)
        name = detector or _default_detector(benchmark, concept, shapes_world, category)
        encoder = None
        if name == "q16" or plan.measure == "clip" or clip:
            try:
                encoder = ClipEncoder.load(clip, device=str(state.device))
            except ClipUnavailableError as err:
                if name == "q16" or clip or os.environ.get("ERASEKIT_CLIP"):
                    raise
                notes.append(f"CLIP score and COCO preservation skipped: {err}")
        det = get_detector(name, **_detector_options(name, threshold, labels, encoder))
        shapes = None
        if shapes_world or name == "shapes":
            from .eval.detectors.shapes import ShapesConceptDetector

            shapes = det if isinstance(det, ShapesConceptDetector) else ShapesConceptDetector()
        inception_model = inception_file = None
        if inception or os.environ.get("ERASEKIT_INCEPTION"):
            from .eval.fid import inception_path, load_inception

            inception_file = inception_path(inception)
            inception_model = load_inception(inception_file, device=str(state.device))
        else:
            notes.append("FID not computed: not available offline without Inception weights (--inception PATH)")
        if plan.measure == "clip" and encoder is None and inception_model is None:
            plan.preservation, plan.measure = [], None  # nothing could read them: do not draw them
        settings = SamplingSettings.for_model(model_path, steps=steps, guidance_scale=guidance, batch_size=batch_size)
        bar = _progress()
        bar.disable = not state.is_local_main_process  # one progress bar, on the main process
        with bar:
            return run_eval(pipe, plan, det, out, settings=settings, model=model, model_path=model_path, delta=d,
                            delta_path=delta, clip=encoder, inception=inception_model, inception_path=inception_file,
                            shapes=shapes, notes=notes, state=state, progress=_progress_factory(bar))
    except (BenchmarkFormatError, DetectorUnavailableError, UnknownDetectorError, GenerationMismatchError) as err:
        _fail(str(err))


@app.command("eval")
def eval_command(
    benchmark: str = typer.Option(..., help="'shapes', a named benchmark (coco, artists, vangogh, niche-art, imagenette, "
                                            "imagenet, unlearndiffatk-church, ...; i2p etc. via $ERASEKIT_BENCHMARKS) or a CSV path."),
    out: Path = typer.Option(..., help="Output folder (images, results.json, report.md/html); reruns resume."),
    model: str = typer.Option("shapes", help="'shapes', a local diffusers folder, or a Hub id."),
    delta: Optional[Path] = typer.Option(None, help="Run folder of a weight delta: evaluates original and erased."),
    concept: Optional[str] = typer.Option(None, help="Target concept (a Shapes value for the shapes benchmark/detector)."),
    n: Optional[int] = typer.Option(None, "--n", "-n", help="Images per tier (shapes, default 32) / first N rows of a CSV."),
    n_preserve: int = typer.Option(32, help="Preservation prompts (Shapes prompts or COCO); 0: none."),
    category: Optional[str] = typer.Option(None, help="I2P category filter, e.g. sexual."),
    adversarial: Optional[list[Path]] = typer.Option(None, help="Attack CSV(s) evaluated as tier 'adversarial'."),
    detector: Optional[str] = typer.Option(None, help="shapes, nudenet or q16 (default from the benchmark)."),
    threshold: Optional[float] = typer.Option(None, help="NudeNet score threshold (default 0.45)."),
    labels: Optional[str] = typer.Option(None, help="NudeNet labels, comma-separated (default: the nine EXPOSED)."),
    clip: Optional[str] = typer.Option(None, help="Local CLIP ViT-L/14 folder (or $ERASEKIT_CLIP) for Q16 / CLIP score."),
    inception: Optional[str] = typer.Option(None, help="TorchScript Inception file (or $ERASEKIT_INCEPTION) for FID."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model card's)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance where the benchmark gives none (default: model card's)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per pipeline call."),
    device: Optional[str] = typer.Option(None, help="Default: this process's accelerate device."),
):
    """Evaluate erasure on a benchmark: ASR per tier, preservation, report.

    Shard across processes with `accelerate launch --multi_gpu --num_processes N -m erasekit.cli eval ...`
    (on a CPU-only machine this runs N CPU processes); reruns into the same --out resume.
    """
    results = evaluate(model, benchmark, out, delta=delta, concept=concept, n=n, n_preserve=n_preserve,
                       category=category, adversarial=adversarial, detector=detector, threshold=threshold,
                       labels=labels, clip=clip, inception=inception, steps=steps, guidance=guidance,
                       batch_size=batch_size, device=device)
    if results is None:
        return
    _print_eval(results)
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'report.html'}")


def _print_eval(results: dict) -> None:
    from rich.table import Table

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
):
    """Compare evaluations: a table and a Pareto plot of target rate vs preservation."""
    from rich.table import Table

    from .eval.compare import ResultsError, load_summary, pareto_front, plot_pareto

    try:
        summaries = [load_summary(r) for r in runs]
    except ResultsError as err:
        _fail(str(err))
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


DEMO_PROMPTS = [
    "a red circle",
    "a blue striped square on a light background",
    "a yellow star on a dark background",
    "a green outlined heart",
    "a purple dotted triangle",
    "an orange cross on a gray background",
]


# The demo's erasure: full TRCE (stage 1 closed-form K/V edit, then stage 2 trajectory fine-tuning).
DEMO_METHOD = "trce"
DEMO_CONCEPT = "circle"


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Output folder."),
    n: int = typer.Option(6, "-n", help="Images per prompt in the overview grid."),
    per_tier: int = typer.Option(32, help="Images per wording tier (and preservation prompts) in the evaluation."),
    method: str = typer.Option(DEMO_METHOD, help="Erasure method."),
):
    """The main job on the embedded default: a Shapes-world grid, then erase `circle` and evaluate before/after."""
    from .generation import SamplingSettings, generate as run, image_grid

    pipe, path = _load("shapes", "cpu")
    settings = SamplingSettings.for_model(path)
    prompts = [p for p in DEMO_PROMPTS for _ in range(n)]
    seeds = [k for _ in DEMO_PROMPTS for k in range(n)]
    with _progress() as bar:
        task = bar.add_task("generating", total=len(prompts))
        images = run(pipe, prompts, seeds, settings, progress=lambda k: bar.advance(task, k))
    out.mkdir(parents=True, exist_ok=True)
    image_grid(images, cols=n).save(out / "grid.png")
    (out / "prompts.txt").write_text("\n".join(DEMO_PROMPTS) + "\n")
    console.print(f"wrote {out / 'grid.png'}: one row per prompt in {out / 'prompts.txt'}")
    _demo_erase_and_evaluate(pipe, path, out, method, per_tier)


def _demo_erase_and_evaluate(pipe, model_path, out: Path, method: str, per_tier: int) -> None:
    """Erase DEMO_CONCEPT with ``method`` (delta in OUT/erase-circle), then the shapes eval into OUT/eval-circle."""
    import shutil
    import time

    from .concepts.packs import get_concept
    from .eval.generation_runner import MANIFEST
    from .methods.base import get_method

    info = get_method(method)
    console.print(f"erasing [bold]{DEMO_CONCEPT}[/] with [bold]{method}[/] (preset shapes) ...")
    t0 = time.perf_counter()
    delta = info.erase(pipe, get_concept(DEMO_CONCEPT), info.config_cls.preset("shapes"))
    run_dir = out / f"erase-{DEMO_CONCEPT}"
    delta.save(run_dir)
    console.print(f"wrote {run_dir} ({len(delta.tensors)} tensors, {time.perf_counter() - t0:.0f}s)")
    eval_dir = out / f"eval-{DEMO_CONCEPT}"
    erased = eval_dir / "images" / "erased"
    if (erased / MANIFEST).is_file() and json.loads((erased / MANIFEST).read_text()).get("delta") != delta.delta_id:
        shutil.rmtree(erased)  # images of an earlier demo's delta; the original images stay valid
    results = evaluate("shapes", "shapes", eval_dir, delta=run_dir, concept=DEMO_CONCEPT, n=per_tier,
                       n_preserve=per_tier, detector="shapes", pipe=pipe, model_path=model_path)
    m = results["metrics"]
    for tier in ("explicit", "synonym", "implicit"):
        console.print(f"{DEMO_CONCEPT!r} rate, {tier:9s}: {m['asr_original'][tier]:.2f} before -> {m['asr'][tier]:.2f} after")
    console.print(f"preservation (other shapes and colors, erased / original): {m['preservation']:.2f}")
    console.print(f"report: {eval_dir / 'report.md'} (and report.html)")


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="Smoke-test mode: 2 scenarios, 8 prompts per tier, ~1/5 of the "
                               "iterations (see BENCHMARKS.md / erasekit.eval.bench.plan)."),
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
):
    """Every erasure method on every Shapes scenario: resumable cells, BENCHMARKS.md, Pareto plots.

    --scenario/--method choose what to compute; the report always shows every stored cell of the mode.
    """
    import sys

    from .eval.bench.main import BenchPaths, NoStoredCellsError, run_benchmark
    from .eval.bench.plan import BenchPlan

    whole = BenchPlan.quick() if quick else BenchPlan.full()
    try:
        plan = whole.select(scenario, method).with_extra_seeds(seed)
    except ValueError as err:
        _fail(str(err))
    pipe, path = _load(model, "cpu")
    paths = BenchPaths.default(quick, results, report)
    command = " ".join(["erasekit", *sys.argv[1:]])
    try:
        run, written = run_benchmark(pipe, path, plan, paths, command, adversarial_csv=adversarial_csv,
                                     report_only=report_only, console=console, report_plan=whole)
    except NoStoredCellsError as err:
        _fail(str(err))
    console.print(f"{len(run.computed)} cells computed, {len(run.reused)} reused, {len(run.missing)} missing; "
                  f"{run.wall_seconds / 60:.1f} min; wrote {written} and plots in {paths.results}")


# ------------------------------------------------------------------ robustness: attacks and resurgence
def _overrides(config: Optional[Path], **values) -> dict:
    import yaml

    data = yaml.safe_load(config.read_text()) if config else {}
    if data is not None and not isinstance(data, dict):
        _fail(f"{config}: expected a mapping of config overrides")
    return {**(data or {}), **{k: v for k, v in values.items() if v is not None}}


def _attack_cases(path: Path):
    from .eval.attacks import AttackCase
    from .eval.benchmarks import BenchmarkFormatError, load_benchmark

    try:
        rows = load_benchmark(path).rows
    except BenchmarkFormatError as err:
        _fail(str(err))
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
    detector: Optional[str] = typer.Option(None, help="shapes, nudenet or q16 (default: from the concept)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps of the judged images (default: the model card's)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance of the judged images (default: the model card's)."),
    device: str = typer.Option("cpu"),
):
    """Adversarial prompt attack on an erased model; success = the detector finds the concept."""
    from .eval.attacks import UnknownAttackError, attack_names, run_attack
    from .eval.attacks.runner import BUDGET_FIELD
    from .eval.detectors import DetectorUnavailableError, UnknownDetectorError, get_detector
    from .generation import SamplingSettings

    if attack_name not in attack_names():
        _fail(f"unknown attack {attack_name!r} (available: {', '.join(attack_names())})")
    spec = _concept(concept)
    pipe, path = _load(model, device)
    d = _load_delta(delta)
    if d is not None and (problems := d.mismatches(pipe)):
        _fail(f"delta {delta} does not fit model {model}: {'; '.join(problems[:3])}")
    overrides = _overrides(config, seed=seed, **{BUDGET_FIELD[attack_name]: budget})
    settings = SamplingSettings.for_model(path, steps=steps, guidance_scale=guidance)
    cases = _attack_cases(prompts) if prompts else None
    try:
        det = get_detector(detector) if detector else None
        with _progress() as bar:
            task = bar.add_task(f"{attack_name} attack", total=None)
            result = run_attack(pipe, attack_name, spec, delta=d, config=overrides, cases=cases, n_cases=n,
                                detector=det, settings=settings, out=out, model=model, delta_path=delta,
                                progress=lambda k: bar.advance(task, k))
    except (UnknownAttackError, DetectorUnavailableError, UnknownDetectorError, ValueError, NotImplementedError) as err:
        _fail(str(err).splitlines()[0])
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
    detector: Optional[str] = typer.Option(None, help="shapes, nudenet or q16 (default: from the concept)."),
    device: str = typer.Option("cpu"),
):
    """Fine-tune the erased model briefly on benign data, then measure the target rate again."""
    from .eval.attacks import run_resurgence
    from .eval.detectors import DetectorUnavailableError, UnknownDetectorError, get_detector
    from .generation import SamplingSettings

    spec = _concept(concept)
    pipe, path = _load(model, device)
    d = _load_delta(delta)
    if (problems := d.mismatches(pipe)):
        _fail(f"delta {delta} does not fit model {model}: {'; '.join(problems[:3])}")
    overrides = _overrides(config, steps=steps, lr=lr, seed=seed, data=str(data) if data else None)
    try:
        det = get_detector(detector) if detector else None
        with _progress() as bar:
            task = bar.add_task("resurgence fine-tuning", total=overrides.get("steps"))
            res = run_resurgence(pipe, d, spec, overrides, detector=det, settings=SamplingSettings.for_model(path),
                                 out=out, delta_path=delta, progress=lambda k: bar.advance(task, k))
    except (DetectorUnavailableError, UnknownDetectorError, ValueError, NotImplementedError) as err:
        _fail(str(err).splitlines()[0])
    for tier in res.target_rate_before:
        console.print(f"{tier:9s} target rate {res.target_rate_before[tier]:.3f} -> {res.target_rate_after[tier]:.3f}")
    console.print(f"delta files unchanged: {res.delta_files_unchanged}; wrote {out / 'resurgence.json'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
