"""`erasekit erase`: one method, one or more concepts (pack names, files or free text), one weight delta."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app

from .common import apply_delta_arg, config_overrides, console, fail, load_model
from .concept_args import concepts_from_args, erase_in_sequence, free_text_for_model, separate_or_fail


@app.command()
def erase(
    method: str = typer.Option(..., help="Erasure method (see `erasekit methods`)."),
    concept: Optional[list[str]] = typer.Option(None, help="Concept name (see `erasekit concepts`) or a YAML/JSON "
                                                "concept file; repeat to erase several (one after the other)."),
    out: Path = typer.Option(..., help="Run folder: delta.safetensors + manifest.json."),
    anchor: Optional[str] = typer.Option(None, help="Replace the concept's anchor (safe counterpart) for every "
                                         "target, e.g. 'shape' for a neutral anchor in the Shapes world."),
    target: Optional[list[str]] = typer.Option(None, help="Your own concept as a word or phrase, e.g. 'cowboy hat' "
                                               "(repeat for several concepts)."),
    synonym: Optional[list[str]] = typer.Option(None, help="With one --target: another wording of it (repeatable)."),
    preserve: Optional[list[str]] = typer.Option(None, help="With --target: a prompt whose images must not change "
                                                 "(repeatable; general prompts of the model are added)."),
    kind: Optional[str] = typer.Option(None, help="With --target: object (default), style, unsafe, instance or attribute."),
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
    specs = concepts_from_args(concept, target, synonym, preserve, kind, anchor, "shapes" if model == "shapes" else "sd")
    if anchor is not None:
        specs = [s.model_copy(update={"anchor": anchor, "target_anchors": {}}) for s in specs]
    if dry_run:
        _print_estimate(info, specs[0], model, preset, config, seed)
        return
    from ..methods import data_parallel

    dp = data_parallel.current()  # started by `accelerate launch` with several processes
    if dp is not None and device.startswith("cuda"):
        device = str(dp.device)  # one GPU per process
    pipe, _ = load_model(model, device, family)
    prior = apply_delta_arg(pipe, start_from)
    world = "shapes" if is_shapes_world(pipe) else "sd"
    if target:
        specs = free_text_for_model(specs, concept, target, synonym, preserve, kind, anchor, world, pipe)
    if prior is not None and anchor is None:
        specs = [_anchor_off_erased(s, prior) for s in specs]
    specs = separate_or_fail(specs)
    spec = specs[0]
    cfg = _method_config(info, preset, world, config, seed)
    preset = preset or world
    if dp is None or dp.is_main:
        suffix = f", data-parallel over {dp.num_processes} processes" if dp is not None else ""
        names = ", ".join(s.name for s in specs)
        console.print(f"erasing [bold]{names}[/] with [bold]{method}[/] (preset {preset}{suffix})", soft_wrap=True)
    delta = info.erase(pipe, spec, cfg) if len(specs) == 1 else erase_in_sequence(pipe, info, specs, cfg)
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
    from ..models.estimate import estimate

    cfg = _method_config(info, preset, "shapes" if model == "shapes" else "sd", config, seed)
    try:
        result = estimate(info.name, model, cfg, kind=spec.kind)
    except (ValueError, RuntimeError) as err:
        fail(str(err).splitlines()[0])
    typer.echo(result.summary())

