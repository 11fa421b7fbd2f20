"""`erasekit export`: a delta merged into a model, written for other tools."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app

from .common import console, fail, load_model


@app.command()
def export(
    delta: Path = typer.Option(..., help="Run folder with delta.safetensors + manifest.json."),
    out: Path = typer.Option(..., help="Output diffusers pipeline folder."),
    model: str = typer.Option("shapes"),
):
    """Write a full diffusers pipeline folder with the delta merged."""
    from ..models.delta import DeltaError, WeightDelta, export_merged

    pipe, _ = load_model(model, "cpu")
    try:
        export_merged(pipe, WeightDelta.load(delta), out)
    except (DeltaError, FileExistsError) as err:
        fail(str(err))
    console.print(f"wrote {out}")

