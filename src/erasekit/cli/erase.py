"""`erasekit erase`: one method, one or more concepts (pack names, files or free text), one weight delta."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from .app import app

from . import checks
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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a delta already in --out."),
    harden: Optional[str] = typer.Option(None, "--harden", help="Then harden the erasure against attacks: rece "
                                         "(closed form), adv (adversarial training) or proj (K/V null space); one delta is written."),
):
    """Erase a concept; writes the weight delta and its manifest."""
    from ..methods.base import UnknownMethodError, get_method
    from ..models.loading import is_shapes_world

    try:
        info = get_method(method)
    except UnknownMethodError as err:
        fail(str(err))
    checks.seed_range(seed)
    if harden is not None:
        from ..methods.harden import VARIANTS

        if harden not in VARIANTS:
            fail(f"unknown hardening variant {harden!r} (available: {', '.join(VARIANTS)})")
    if harden is not None and len(concept or []) + len(target or []) > 1:
        fail("--harden hardens one concept: erase several, then run `erasekit harden` per concept")
    if not dry_run:
        _check_out(out, start_from, overwrite)
    checks.input_dir(start_from, "--from")
    specs = concepts_from_args(concept, target, synonym, preserve, kind, anchor, "shapes" if model == "shapes" else "sd")
    if anchor is not None:
        specs = [_with_anchor(s, anchor) for s in specs]
    config_overrides(config)  # a malformed --config file is refused before any work
    if dry_run:
        _print_estimate(info, specs[0], model, preset, config, seed)
        return
    from ..training import data_parallel

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
    if harden is not None:
        delta = _harden(pipe, delta, spec, harden, world, seed)
    if dp is not None and not dp.is_main:
        return  # every replica holds the same delta (checked by the trainer); process 0 writes it
    delta.save(out)  # refuses an empty or non-finite delta (one line, nothing written)
    m = delta.manifest
    console.print(f"wrote {out}: {len(delta.tensors)} tensors, {m.wall_time_s:.1f}s")


def _harden(pipe, delta, spec, variant: str, world: str, seed: Optional[int]):
    """``delta`` hardened by ``variant`` (the world's preset), as one delta on the same base."""
    from ..methods.harden import harden, variant_config

    cfg = variant_config(variant).for_world(world, **({"seed": seed} if seed is not None else {}))
    console.print(f"hardening with [bold]{variant}[/]")
    try:
        return harden(pipe, delta, spec, cfg)
    except (ValueError, NotImplementedError) as err:
        fail(str(err).splitlines()[0])


def _check_out(out: Path, start_from: Optional[Path], overwrite: bool) -> None:
    """``--out`` is a writable folder, not the ``--from`` folder, and holds no delta unless ``--overwrite``."""
    from ..models.delta import MANIFEST_FILE, TENSORS_FILE

    if checks.same_path(out, start_from):
        fail(f"--out {out} is the --from folder: the new delta names that delta as its parent and needs it; "
             "choose another --out")
    checks.out_dir(out)
    if not overwrite and any((out / f).exists() for f in (MANIFEST_FILE, TENSORS_FILE)):
        fail(f"--out {out} already holds a delta; pass --overwrite to replace it or choose another folder")


def _with_anchor(spec, anchor: str):
    """``spec`` with ``anchor`` for every target, validated (an anchor that is a target is refused)."""
    from ..concepts.spec import ConceptSpecError

    try:
        return spec.with_anchor(anchor)
    except ConceptSpecError as err:
        fail(f"--anchor {anchor!r}: {err}")


def _method_config(info, preset: Optional[str], world: str, config: Optional[Path], seed: Optional[int]):
    """The method's config: a ``--preset`` named by the user must exist; without one, the world's preset or SD's."""
    from pydantic import ValidationError

    from .errors import one_line

    overrides = config_overrides(config, seed=seed)
    known = ("sd", *info.config_cls.PRESETS)
    if preset is not None and preset not in known:
        fail(f"{info.name} has no preset {preset!r}; presets: {', '.join(known)}")
    try:
        cfg = (info.config_cls.for_world(world, **overrides) if preset is None
               else info.config_cls.preset(preset, **overrides))
    except ValidationError as err:
        source = f"--config {config}" if config else "its flags"
        fail(f"{info.name} config from {source}: {one_line(err).removeprefix('invalid ')}")
    iterations = getattr(cfg, "iterations", None)
    if isinstance(iterations, int) and iterations < 1:
        fail(f"{info.name} config: iterations must be at least 1 (got {iterations}); a run of no iterations "
             "erases nothing")
    lr = getattr(cfg, "lr", None)
    if isinstance(lr, (int, float)) and not (math.isfinite(lr) and lr > 0):
        fail(f"{info.name} config: lr must be a finite number above 0 (got {lr})")
    return cfg


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

