"""`erasekit export`: a delta merged into a model, written for other tools (diffusers, LoRA, A1111/ComfyUI)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app

from .common import chain_arg, console, fail, load_deltas, load_model


@app.command()
def export(
    delta: list[Path] = typer.Option(..., help="Run folder with delta.safetensors + manifest.json; repeat to export "
                                     "a chain applied in order (a child after its --from parent) as one model."),
    out: Path = typer.Option(..., help="Output folder (the weights file inside it is named after it)."),
    fmt: str = typer.Option("diffusers", "--format", help="diffusers (pipeline folder), lora (diffusers/peft "
                            "load_lora_weights), kohya (A1111/ComfyUI LoRA) or single-file (A1111/ComfyUI checkpoint)."),
    model: Optional[str] = typer.Option(None, help="The delta's base model (default: the one its manifest names)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    rank: Optional[int] = typer.Option(None, help="lora/kohya: at most this rank per layer (default: exact); "
                                       "the reconstruction error is reported."),
    dtype: Optional[str] = typer.Option(None, help="single-file: cast weights, e.g. fp16 (default: keep)."),
    eval_run: Optional[Path] = typer.Option(None, "--eval", help="Evaluation folder of this delta (results.json): "
                                            "its rates go into the model card."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="Upload the folder to this Hub "
                                              "repository (owner/name)."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repository private."),
):
    """Write the erased model as a diffusers folder, a LoRA, a kohya LoRA or a single-file checkpoint, with a model card."""
    from ..export import FORMATS, ExportError
    from ..export.hub import check_repo_id, push_to_hub as push
    from ..export.run import export_model

    if fmt not in FORMATS:
        fail(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if out.exists() and not overwrite:
        fail(f"{out} exists; pass --overwrite to replace it")
    try:
        if push_to_hub:
            check_repo_id(push_to_hub)
    except ExportError as err:
        fail(str(err))
    deltas = load_deltas(delta)  # every folder is read (and refused in one line) before the model loads
    model = model or deltas[0].manifest.base_model or "shapes"
    pipe, _ = load_model(model, "cpu")
    d = chain_arg(pipe, deltas) if len(deltas) > 1 else deltas[0]  # one delta: export_model checks its base
    try:
        result = export_model(pipe, d, out, fmt, overwrite=overwrite, rank=rank, dtype=dtype, base_model=model,
                              eval_run=eval_run)
    except (ExportError, ValueError) as err:
        fail(str(err).splitlines()[0])
    for note in result.notes:
        console.print(note)
    console.print(f"wrote {out} ({fmt})")
    if push_to_hub:
        try:
            url = push(out, push_to_hub, private=private)
        except ExportError as err:
            fail(str(err))
        console.print(f"pushed {out} to {url}")
