"""`erasekit harden`: make an erasure hold under attack; writes one composed delta."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app
from .common import config_overrides, console, fail, load_concept, load_delta, load_model


@app.command()
def harden(
    delta: Optional[Path] = typer.Option(None, help="Run folder of the erasure to harden (omit: harden the model as loaded)."),
    concept: str = typer.Option(..., help="The erased concept (name or YAML/JSON concept file)."),
    out: Path = typer.Option(..., help="Run folder of the composed delta (base erasure + hardening)."),
    variant: str = typer.Option("rece", help="rece: closed-form adversarial embedding + K/V edit (RECE); "
                                "adv: adversarial training of the text encoder or a UNet scope (AdvUnlearn); "
                                "proj: the concept's text directions put in the K/V null space (erasekit's)."),
    model: str = typer.Option("shapes"),
    preset: Optional[str] = typer.Option(None, help="Config preset (default: 'shapes' on the Shapes model, else 'sd')."),
    config: Optional[Path] = typer.Option(None, help="JSON/YAML file of hardening config overrides."),
    device: str = typer.Option("cpu"),
):
    """Harden an erasure against embeddings that bring the concept back; the manifest records the chain."""
    from ..methods.harden import VARIANTS, harden as run
    from ..models.delta import DeltaError
    from ..models.loading import is_shapes_world

    if variant not in VARIANTS:
        fail(f"unknown hardening variant {variant!r} (available: {', '.join(VARIANTS)})")
    config_cls = VARIANTS[variant]
    if delta is not None and out.resolve() == delta.resolve():
        fail("--out must differ from --delta: the composed delta does not replace its base")
    spec = load_concept(concept)
    pipe, _ = load_model(model, device)
    base = load_delta(delta)
    world = "shapes" if is_shapes_world(pipe) else "sd"
    name = preset or world
    if name != "sd" and name not in config_cls.PRESETS:
        fail(f"{variant} has no preset {name!r}; presets: sd, {', '.join(config_cls.PRESETS)}")
    try:
        cfg = config_cls.preset(name, **config_overrides(config))
        result = run(pipe, base, spec, cfg)
    except (DeltaError, ValueError, NotImplementedError) as err:
        fail(str(err).splitlines()[0])
    result.save(out)
    m = result.manifest.metrics
    if "rounds" in m:
        detail = (f"{len(m['rounds'])} rounds; adversarial reproduction error "
                  f"{m['rounds'][0]['reproduction_error_before']:.3f} -> {m['rounds'][-1]['reproduction_error_after']:.3f}")
    else:
        last = m["attack_rounds"][-1] if m["attack_rounds"] else None
        detail = (f"{m['iterations']} iterations, {len(m['attack_rounds'])} attack rounds"
                  + (f"; last attack loss {last['loss_first']:.4f} -> {last['loss_last']:.4f}" if last else ""))
    console.print(f"wrote {out}: {result.manifest.method}, {result.manifest.wall_time_s:.1f}s, {detail}")
