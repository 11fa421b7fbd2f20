"""`erasekit erase`: one concept, one method, one weight delta."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app
from .common import apply_delta_arg, config_overrides, console, fail, load_concept, load_model


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
    from ..methods.base import UnknownMethodError, get_method
    from ..models.loading import is_shapes_world

    try:
        info = get_method(method)
    except UnknownMethodError as err:
        fail(str(err))
    spec = load_concept(concept)
    if anchor is not None:
        spec = spec.model_copy(update={"anchor": anchor, "target_anchors": {}})
    if dry_run:
        _print_estimate(info, spec, model, preset, config, seed)
        return
    from ..training import data_parallel

    dp = data_parallel.current()  # started by `accelerate launch` with several processes
    if dp is not None and device.startswith("cuda"):
        device = str(dp.device)  # one GPU per process
    pipe, _ = load_model(model, device, family)
    prior = apply_delta_arg(pipe, start_from)
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
    overrides = config_overrides(config, seed=seed)
    if preset is None:
        return info.config_cls.for_world(world, **overrides)
    known = ("sd", *info.config_cls.PRESETS)
    if preset not in known:
        fail(f"{info.name} has no preset {preset!r}; presets: {', '.join(known)}")
    return info.config_cls.preset(preset, **overrides)


def _anchor_off_erased(spec, prior):
    """``spec`` with its anchor moved off the concepts ``prior`` (a ``--from`` delta) already erased."""
    from ..concepts.joint import AnchorCollisionError, erased_concepts, separate_anchors
    from ..concepts.spec import ConceptSpecError

    try:
        done = erased_concepts(prior.manifest.config)
        (moved,) = separate_anchors([spec], already_erased=done)
    except (AnchorCollisionError, ConceptSpecError) as err:
        fail(str(err))
    if moved.anchor != spec.anchor or moved.target_anchors != spec.target_anchors:
        console.print(f"anchor {spec.anchor!r} is erased by the --from delta; using {moved.anchor!r}")
    return moved


def _print_estimate(info, spec, model: str, preset: Optional[str], config: Optional[Path], seed: Optional[int]):
    from ..methods.estimate import estimate

    cfg = _method_config(info, preset, "shapes" if model == "shapes" else "sd", config, seed)
    try:
        result = estimate(info.name, model, cfg, kind=spec.kind)
    except (ValueError, RuntimeError) as err:
        fail(str(err).splitlines()[0])
    typer.echo(result.summary())

