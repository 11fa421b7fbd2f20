"""The erased model as a full diffusers pipeline folder (``from_pretrained`` loads it)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..models.delta import EXPORT_MANIFEST_FILE, WeightDelta, apply_delta, revert_delta
from .output import ExportError, atomic_folder, source_folder

# Files beside a pipeline's components that erasekit reads: the model card that names the Shapes
# world and its sampling defaults.  An export keeps them, so it is recognised as its base model.
CARD_FILES = ("erasekit.json",)


def write_merged(pipe: Any, delta: WeightDelta, folder: Path) -> list[str]:
    """Save ``pipe`` with ``delta`` merged into ``folder`` (``pipe`` is left as it was).

    Also writes the delta's manifest (``erasekit_delta.json``) and copies the
    base model's card files; returns the names of the card files copied.
    """
    if not hasattr(pipe, "save_pretrained"):
        raise ExportError(f"{type(pipe).__name__} has no save_pretrained; export needs a diffusers pipeline")
    applied_here = bool(delta.mismatches(pipe, "new"))
    if applied_here:
        apply_delta(pipe, delta)
    try:
        pipe.save_pretrained(str(folder))
    finally:
        if applied_here:
            revert_delta(pipe, delta)
    (folder / EXPORT_MANIFEST_FILE).write_text(delta.manifest.model_dump_json(indent=2), encoding="utf-8")
    source = source_folder(pipe)
    copied = []
    for name in CARD_FILES:
        if source is not None and (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
            copied.append(name)
    return copied


def export_merged(pipe: Any, delta: WeightDelta, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a full diffusers pipeline folder with ``delta`` merged, atomically; returns ``out_dir``.

    The folder holds the pipeline, ``erasekit_delta.json`` and the base model's
    card files (`CARD_FILES`).  An existing ``out_dir`` is an `ExportError`
    unless ``overwrite``.
    """
    with atomic_folder(out_dir, overwrite) as tmp:
        write_merged(pipe, delta, tmp)
    return Path(out_dir)
