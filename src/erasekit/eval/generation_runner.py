"""Resumable, sharded, seeded generation of benchmark rows into a folder of PNGs.

- Row ``i`` is saved as ``images/{i:06d}.png`` (written atomically); a rerun skips
  rows whose PNG exists, so an interrupted run resumes where it stopped.
- ``generation.json`` in the folder fingerprints the rows (prompt, seed, guidance),
  the sampling settings, the model and the delta: a folder filled under other
  settings is refused instead of silently mixed.
- Under ``accelerate launch`` each process takes rows ``rank, rank + W, ...``
  (accelerate's `PartialState` gives rank and world size); since every image
  depends only on its own row, the merged folder equals a one-process run.
- Per-row seed and guidance are honoured: rows are batched by guidance value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from ..generation import SamplingSettings, generate
from . import atomic
from .benchmarks import BenchmarkRow

MANIFEST = "generation.json"


class GenerationMismatchError(RuntimeError):
    """The images folder holds images made under other rows or settings; one line."""


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """The rows process ``rank`` of ``world_size`` draws: rank, rank + W, rank + 2W, ..."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return list(indices)[rank::world_size]


def distributed_state(cpu: bool = False):
    """accelerate's PartialState (rank, world size, device); a single process when not launched."""
    from accelerate import PartialState

    return PartialState(cpu=cpu)


def fingerprint(rows: Sequence[BenchmarkRow], settings: SamplingSettings, model: str, delta_id: str | None) -> dict:
    """What the images in a folder depend on, with a sha256 over all of it."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.prompt, int(r.seed), r.guidance]).encode())
        h.update(b"\n")
    info = {"rows": len(rows), "rows_sha256": h.hexdigest(), "settings": dataclasses.asdict(settings),
            "model": model, "delta": delta_id}
    info["settings"].pop("batch_size", None)  # batching does not change the images
    info["fingerprint"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
    return info


def _check_manifest(folder: Path, info: dict, write: bool) -> None:
    path = folder / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("fingerprint") != info["fingerprint"]:
            raise GenerationMismatchError(
                f"{folder} holds images made from other prompts or settings "
                f"(model {old.get('model')!r}, delta {old.get('delta')!r}, {old.get('rows')} rows); use another --out")
    elif write:
        atomic.write_json(path, info)


def pending(folder: Path, indices: Sequence[int]) -> list[int]:
    """The indices whose PNG is not yet in ``folder``."""
    return [i for i in indices if not (folder / image_name(i)).is_file()]


def run_generation(pipe, rows: Sequence[BenchmarkRow], settings: SamplingSettings, folder: str | Path, *,
                   model: str = "", delta_id: str | None = None, rank: int = 0, world_size: int = 1,
                   progress: Callable[[int], None] | None = None) -> list[int]:
    """Draw this process's missing rows into ``folder``; returns the indices drawn now.

    Call it in every process with the same arguments (``rank``/``world_size`` from
    `distributed_state`); wait for all processes before reading the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _check_manifest(folder, fingerprint(rows, settings, model, delta_id), write=rank == 0)
    todo = pending(folder, shard(range(len(rows)), rank, world_size))
    groups: dict[float, list[int]] = {}
    for i in todo:
        g = rows[i].guidance if rows[i].guidance is not None else settings.guidance_scale
        groups.setdefault(float(g), []).append(i)
    for guidance, idx in groups.items():
        run_settings = dataclasses.replace(settings, guidance_scale=guidance)
        for start in range(0, len(idx), settings.batch_size):
            chunk = idx[start:start + settings.batch_size]
            images = generate(pipe, [rows[i].prompt for i in chunk], [rows[i].seed for i in chunk], run_settings)
            for i, im in zip(chunk, images):
                atomic.save_image(folder / image_name(i), im)
            if progress is not None:
                progress(len(chunk))
    return todo


def load_images(folder: str | Path, indices: Sequence[int]) -> list[Image.Image]:
    """The PNGs of ``indices`` from ``folder`` (RGB, fully read); missing ones are an error."""
    folder = Path(folder)
    missing = [i for i in indices if not (folder / image_name(i)).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} images missing (first: {image_name(missing[0])}); "
                                "did every process finish?")
    out = []
    for i in indices:
        with Image.open(folder / image_name(i)) as im:
            out.append(im.convert("RGB"))
    return out
