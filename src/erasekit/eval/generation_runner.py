"""Resumable, sharded, seeded generation of benchmark rows into a folder of PNGs.

- Row ``i`` is saved as ``{i:06d}.png`` (written atomically); a rerun skips work
  already done, so an interrupted run resumes where it stopped.
- ``generation.json`` in the folder fingerprints the rows (prompt, seed, guidance),
  the sampling settings (batch size included), the model and the delta: a folder
  filled under other settings is refused instead of silently mixed.
- Per-row seed and guidance are honoured: rows are grouped by guidance value and
  each group is cut into batches of ``batch_size`` -- one fixed list of batches
  that depends only on the rows and the settings.
- Under ``accelerate launch`` process ``rank`` of ``W`` draws batches rank, rank + W, ...
  (accelerate's `PartialState` gives rank and W); with ``batch_size=1`` that is rows
  rank, rank + W, ....  Sharding whole batches rather than single rows is deliberate:
  a pipeline's output for one prompt changes in its last bits with the other prompts
  of its batch (measured on CPU: pixel values off by 1), so only a batch layout that
  depends neither on W nor on what a resumed run still lacks makes the merged folder
  equal, bit for bit, to a one-process run.  A resumed run redraws every batch that
  lacks an image, whole.
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


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """The items process ``rank`` of ``world_size`` takes: rank, rank + W, rank + 2W, ..."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return list(items)[rank::world_size]


def distributed_state(cpu: bool = False):
    """accelerate's PartialState (rank, world size, device); a single process when not launched.

    Without CUDA, launched processes are joined on the CPU (gloo): `erasekit.training.data_parallel.partial_state`.
    """
    from ..training.data_parallel import partial_state

    return partial_state(cpu)


def fingerprint(rows: Sequence[BenchmarkRow], settings: SamplingSettings, model: str, delta_id: str | None) -> dict:
    """What the images in a folder depend on, with a sha256 over all of it."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.prompt, int(r.seed), r.guidance]).encode())
        h.update(b"\n")
    info = {"rows": len(rows), "rows_sha256": h.hexdigest(), "settings": dataclasses.asdict(settings),
            "model": model, "delta": delta_id}
    info["fingerprint"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
    return info


def _check_manifest(folder: Path, info: dict, write: bool) -> None:
    path = folder / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("fingerprint") != info["fingerprint"]:
            raise GenerationMismatchError(
                f"{folder} holds images made from other prompts or settings "
                f"(model {old.get('model')!r}, delta {old.get('delta')!r}, {old.get('rows')} rows, "
                f"settings {old.get('settings')}); use another --out")
    elif write:
        atomic.write_json(path, info)


def batches(rows: Sequence[BenchmarkRow], settings: SamplingSettings) -> list[tuple[float, list[int]]]:
    """(guidance, row indices) of every batch: rows grouped by guidance (first-seen order), cut by batch size."""
    groups: dict[float, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(float(r.guidance if r.guidance is not None else settings.guidance_scale), []).append(i)
    size = max(1, settings.batch_size)
    return [(g, idx[s:s + size]) for g, idx in groups.items() for s in range(0, len(idx), size)]


def pending(folder: str | Path, rows: Sequence[BenchmarkRow], settings: SamplingSettings, rank: int = 0,
            world_size: int = 1) -> list[tuple[float, list[int]]]:
    """This process's batches that still lack at least one image in ``folder``."""
    folder = Path(folder)
    return [(g, idx) for g, idx in shard(batches(rows, settings), rank, world_size)
            if not all((folder / image_name(i)).is_file() for i in idx)]


def run_generation(pipe, rows: Sequence[BenchmarkRow], settings: SamplingSettings, folder: str | Path, *,
                   model: str = "", delta_id: str | None = None, rank: int = 0, world_size: int = 1,
                   progress: Callable[[int], None] | None = None) -> list[int]:
    """Draw this process's unfinished batches into ``folder``; returns the row indices drawn now.

    Call it in every process with the same arguments (``rank``/``world_size`` from
    `distributed_state`); wait for all processes before reading the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _check_manifest(folder, fingerprint(rows, settings, model, delta_id), write=rank == 0)
    drawn: list[int] = []
    for guidance, chunk in pending(folder, rows, settings, rank, world_size):
        run_settings = dataclasses.replace(settings, guidance_scale=guidance)
        images = generate(pipe, [rows[i].prompt for i in chunk], [rows[i].seed for i in chunk], run_settings)
        for i, im in zip(chunk, images):
            atomic.save_image(folder / image_name(i), im)
        drawn.extend(chunk)
        if progress is not None:
            progress(len(chunk))
    return drawn


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
