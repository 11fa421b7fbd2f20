"""`erasekit demo`: the main job on the embedded Shapes model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .app import app

from . import checks
from .common import console, fail, load_model, progress_bar
from .evaluate import run_evaluation


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
    from ..eval.atomic import save_image, write_text
    from ..generation import SamplingSettings, generate as run, image_grid
    from ..methods.base import UnknownMethodError, get_method

    checks.at_least(n, 1, "-n")
    checks.at_least(per_tier, 1, "--per-tier")
    checks.out_dir(out)
    try:
        get_method(method)
    except UnknownMethodError as err:
        fail(str(err))
    pipe, path = load_model("shapes", "cpu")
    settings = SamplingSettings.for_model(path)
    prompts = [p for p in DEMO_PROMPTS for _ in range(n)]
    seeds = [k for _ in DEMO_PROMPTS for k in range(n)]
    with progress_bar() as bar:
        task = bar.add_task("generating", total=len(prompts))
        images = run(pipe, prompts, seeds, settings, progress=lambda k: bar.advance(task, k))
    save_image(out / "grid.png", image_grid(images, cols=n))
    write_text(out / "prompts.txt", "\n".join(DEMO_PROMPTS) + "\n")
    console.print(f"wrote {out / 'grid.png'}: one row per prompt in {out / 'prompts.txt'}")
    _demo_erase_and_evaluate(pipe, path, out, method, per_tier)


def _demo_erase_and_evaluate(pipe, model_path, out: Path, method: str, per_tier: int) -> None:
    """Erase DEMO_CONCEPT with ``method`` (delta in OUT/erase-circle), then the shapes eval into OUT/eval-circle."""
    import shutil
    import time

    from ..concepts.packs import get_concept
    from ..eval.generate import MANIFEST
    from ..methods.base import get_method

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
    results = run_evaluation("shapes", "shapes", eval_dir, delta=run_dir, concept=DEMO_CONCEPT, n=per_tier,
                       n_preserve=per_tier, detector="shapes", pipe=pipe, model_path=model_path)
    m = results["metrics"]
    for tier in ("explicit", "synonym", "implicit"):
        console.print(f"{DEMO_CONCEPT!r} rate, {tier:9s}: {m['asr_original'][tier]:.2f} before -> {m['asr'][tier]:.2f} after")
    console.print(f"preservation (other shapes and colors, erased / original): {m['preservation']:.2f}")
    console.print(f"report: {eval_dir / 'report.md'} (and report.html)")

