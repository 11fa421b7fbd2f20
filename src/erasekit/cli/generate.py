"""`erasekit generate` (an image grid) and `erasekit adherence` (prompt adherence of a Shapes model)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app

from . import checks
from .common import apply_delta_arg, console, fail, load_model, note, progress_bar


@app.command()
def generate(
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="Prompt (repeatable)."),
    model: str = typer.Option("shapes", help="'shapes', a local diffusers folder, or a Hub id."),
    n: int = typer.Option(4, "-n", help="Images per prompt."),
    seed: int = typer.Option(0, help="Seed of the first image; image k uses seed+k."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model card's)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (default: the model card's)."),
    out: Path = typer.Option(Path("grid.png"), help="Output grid PNG."),
    delta: Optional[list[Path]] = typer.Option(None, help="Run folder of a weight delta to apply first; repeat "
                                               "to apply a chain in order (a child after its --from parent)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="What every image should not show."),
    height: Optional[int] = typer.Option(None, help="Image height in pixels (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Image width in pixels (default: the height, else the model's)."),
    device: str = typer.Option("auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
):
    """Generate an image grid (one row per prompt)."""
    from ..eval.atomic import save_image
    from ..generation import SamplingSettings, generate as run, image_grid, overlong_prompts

    checks.prompts_text(prompt)
    checks.at_least(n, 1, "-n")
    checks.at_least(steps, 1, "--steps")
    checks.seed_range(seed, count=n)
    for label, px in (("--height", height), ("--width", width)):
        if px is not None and (px < 8 or px % 8):
            fail(f"{label} must be a positive multiple of 8, got {px}")
    guidance_note = checks.guidance_value(guidance)
    checks.out_file(out, suffixes=checks.IMAGE_SUFFIXES, overwrite=overwrite)
    for path in delta or []:
        checks.input_dir(path, "--delta")
    pipe, path = load_model(model, resolve_device(device))
    apply_delta_arg(pipe, delta)
    settings = SamplingSettings.for_model(path, steps=steps, guidance_scale=guidance,
                                          height=height or width, width=width or height)
    for line in filter(None, [guidance_note, overlong_prompts(pipe, prompt)]):
        note(line)
    if negative_prompt is not None:
        pipe = WithNegativePrompt(pipe, negative_prompt)
    prompts = [p for p in prompt for _ in range(n)]
    seeds = [seed + k for _ in prompt for k in range(n)]
    with progress_bar() as bar:
        task = bar.add_task("generating", total=len(prompts))
        images = run(pipe, prompts, seeds, settings, progress=lambda k: bar.advance(task, k))
    save_image(out, image_grid(images, cols=n))
    console.print(f"wrote {out} ({len(images)} images, {settings.steps} steps, guidance {settings.guidance_scale})")



def resolve_device(device: str) -> str:
    """``auto``: the first of CUDA, Apple MPS and CPU that is available; other values as given."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


class WithNegativePrompt:
    """A pipeline whose every call also gets ``negative_prompt`` (one per prompt); other attributes pass through."""

    def __init__(self, pipe, negative_prompt: str):
        self._pipe, self._negative = pipe, negative_prompt

    def __call__(self, prompt, **kwargs):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return self._pipe(prompt=prompts, negative_prompt=[self._negative] * len(prompts), **kwargs)

    def __getattr__(self, name):
        return getattr(self._pipe, name)


@app.command()
def adherence(
    model: str = typer.Option("shapes"),
    per_tier: int = typer.Option(64, help="Images per wording tier."),
    seed: int = typer.Option(0),
    steps: Optional[int] = typer.Option(None),
    guidance: Optional[float] = typer.Option(None),
    out: Optional[Path] = typer.Option(None, help="Write the table as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
):
    """Prompt adherence of a Shapes-world model, measured by the detector, per wording tier."""
    from ..eval.atomic import write_json
    from ..eval.measure import measure_adherence
    from ..generation import SamplingSettings

    checks.at_least(per_tier, 1, "--per-tier")
    checks.at_least(steps, 1, "--steps")
    checks.seed_range(seed, count=per_tier * 3)
    guidance_note = checks.guidance_value(guidance)
    if out is not None:
        checks.out_file(out, suffixes=(".json",), overwrite=overwrite)
    pipe, path = load_model(model, "cpu")
    settings = SamplingSettings.for_model(path, steps=steps, guidance_scale=guidance)
    if guidance_note:
        note(guidance_note)
    with progress_bar() as bar:
        task = bar.add_task("adherence", total=per_tier * 3)
        table = measure_adherence(pipe, per_tier=per_tier, seed=seed, settings=settings, progress=lambda k: bar.advance(task, k))
    for tier, row in table["tiers"].items():
        console.print(f"{tier:9s} " + "  ".join(f"{a} {v:.3f}" for a, v in row.items()))
    if out:
        write_json(out, table)

