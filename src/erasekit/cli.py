"""erasekit command-line interface."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Erase concepts from text-to-image diffusion models.")
console = Console(stderr=True)


class UserError(Exception):
    """An error whose message is shown to the user as one line, without a traceback."""


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _load(model: str, device: str):
    from .models.loading import ModelNotFoundError, load_pipeline, resolve_model_path

    try:
        return load_pipeline(model, device=device), resolve_model_path(model)
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
    model: str = typer.Option("shapes"),
    preset: Optional[str] = typer.Option(None, help="Config preset (default: 'shapes' on the Shapes model, else 'sd')."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file of config overrides."),
    start_from: Optional[Path] = typer.Option(None, "--from", help="Apply this delta first (methods compose)."),
    seed: Optional[int] = typer.Option(None),
    device: str = typer.Option("cpu"),
):
    """Erase a concept; writes the weight delta and its manifest."""
    import yaml

    from .methods.base import UnknownMethodError, get_method
    from .models.loading import is_shapes_world

    try:
        info = get_method(method)
    except UnknownMethodError as err:
        _fail(str(err))
    spec = _concept(concept)
    pipe, _ = _load(model, device)
    _apply_delta_arg(pipe, start_from)
    overrides = yaml.safe_load(config.read_text()) if config else {}
    preset = preset or ("shapes" if is_shapes_world(pipe) else "sd")
    cfg = info.config_cls.preset(preset if preset in info.config_cls.PRESETS else "sd", **overrides, seed=seed)
    console.print(f"erasing [bold]{spec.name}[/] with [bold]{method}[/] (preset {preset})")
    delta = info.erase(pipe, spec, cfg)
    delta.save(out)
    m = delta.manifest
    console.print(f"wrote {out}: {len(delta.tensors)} tensors, {m.wall_time_s:.1f}s")


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


DEMO_PROMPTS = [
    "a red circle",
    "a blue striped square on a light background",
    "a yellow star on a dark background",
    "a green outlined heart",
    "a purple dotted triangle",
    "an orange cross on a gray background",
]


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), help="Output folder."), n: int = typer.Option(6, "-n")):
    """The main job on the embedded default: a grid of Shapes-world images from several prompts."""
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
