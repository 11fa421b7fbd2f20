"""What every export format shares: its error type, the format names, and atomic output folders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMATS = ("diffusers", "lora", "kohya", "single-file")


class ExportError(ValueError):
    """An export cannot be written (exists, unsupported change, wrong model); the message is one line."""


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    ``out`` existing without ``overwrite`` is an `ExportError` raised before any
    work.  On failure the temporary folder is removed and ``out`` is untouched.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.{os.getpid()}.old"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def source_folder(pipe) -> Path | None:
    """The local folder ``pipe`` was loaded from (None for pipelines built in memory or from the Hub)."""
    path = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return Path(str(path)) if path and Path(str(path)).is_dir() else None


def check_base(pipe, delta) -> None:
    """`ExportError` unless ``pipe`` holds the delta's base tensors (the delta is not applied)."""
    problems = delta.mismatches(pipe, "base")
    if problems and delta.manifest.parent:
        raise ExportError(f"delta {delta.delta_id} was computed on top of delta {delta.manifest.parent}: export that "
                          "one merged (--format diffusers) and pass its folder as --model")
    if problems:
        raise ExportError(f"the model is not the base of delta {delta.delta_id} ({problems[0]}); "
                          "pass --model <the model the delta was computed on>")


def base_and_new(pipe, delta) -> dict[str, tuple]:
    """Per changed tensor name: (base tensor on CPU, new tensor), after `check_base`."""
    from ..models.delta import resolve_tensors

    check_base(pipe, delta)
    live = resolve_tensors(pipe, delta.names)
    return {n: (live[n].detach().cpu(), delta.tensors[n]) for n in delta.names}
