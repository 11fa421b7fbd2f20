"""The one generation path: seeded benchmark rows drawn in fixed batches, in memory or into PNG folders.

`draw` returns the images of rows (the benchmark's in-memory cells); `draw_pending`
and `run_generation` draw them resumably and sharded into a folder (an evaluation):

- Row ``i`` is saved as ``{i:06d}.png`` (written atomically); a rerun skips work
  already done, so an interrupted run resumes where it stopped.  An image counts
  as drawn only when its PNG is complete (ends with the IEND chunk): empty or
  truncated files are redrawn.
- ``generation.json`` in the folder fingerprints the rows (prompt, seed, guidance),
  the sampling settings (batch size included), the model name, a digest of the
  weights actually used (`weights_digest`) and the delta id: a folder filled under
  other rows, settings, model name or delta is refused instead of silently mixed;
  one filled from the same model name whose weights have since changed is cleared
  and redrawn (with a note).  The record is read and written under a file lock,
  and written atomically.
- Per-row seed and guidance are honoured: rows are grouped by guidance value and
  each group is cut into batches of ``batch_size`` -- one fixed list of batches
  that depends only on the rows and the settings.
- With several processes only process 0 writes the record and removes stale images;
  after a barrier the others check that the record is exactly their own fingerprint
  and stop with a one-line error otherwise, so no process deletes another's images.
  The weights digest covers tensors and the scheduler's class and public settings
  (not diffusers' bookkeeping keys, whose order changes with the hash seed), so every
  process, and every later run, computes the same digest for the same weights.
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

import contextlib
import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from ..generation import SamplingSettings, generate
from ..models.digest import json_sha256, new_hash, update_module
from . import atomic
from .benchmarks import BenchmarkRow

MANIFEST = "generation.json"
LOCK = ".generation.lock"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# what a request names; when only the weights behind it changed, the folder is redrawn
_REQUEST_KEYS = ("rows", "rows_sha256", "settings", "model", "delta")


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


def _canonical(value):
    """``value`` with sets as sorted lists and mapping keys starting with ``_`` dropped (JSON-ready)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def scheduler_digest_text(scheduler) -> str:
    """The scheduler's class name and public config as sorted JSON: the same in every process.

    diffusers' private keys (``_use_default_values`` is a list built from a set, so its order
    follows the process's hash seed; ``_class_name``, ``_diffusers_version``) are left out.
    """
    config = _canonical(dict(scheduler.config))
    return json.dumps({"class": type(scheduler).__name__, "config": config}, sort_keys=True, default=str)


def weights_digest(pipe) -> str:
    """sha256 over the names and raw bytes of every tensor of the pipeline's modules, and its scheduler.

    The scheduler enters as `scheduler_digest_text`, so the digest of the same weights is the
    same in every process whatever its hash seed.
    """
    h = new_hash()
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        components = {k: v for k, v in vars(pipe).items() if not k.startswith("_")}
    for cname in sorted(components):
        module = components[cname]
        if isinstance(module, torch.nn.Module):
            update_module(h, module, f"{cname}.")
        elif cname == "scheduler" and hasattr(module, "config"):
            h.update(scheduler_digest_text(module).encode())
    return h.hexdigest()


def fingerprint(rows: Sequence[BenchmarkRow], settings: SamplingSettings, model: str, delta_id: str | None,
                weights: str | None = None) -> dict:
    """What the images in a folder depend on, with a sha256 over all of it.

    ``weights``: `weights_digest` of the pipeline the images are drawn from, before any delta.
    """
    h = new_hash()
    for r in rows:
        h.update(json.dumps([r.prompt, int(r.seed), r.guidance]).encode())
        h.update(b"\n")
    info = {"rows": len(rows), "rows_sha256": h.hexdigest(), "settings": dataclasses.asdict(settings),
            "model": model, "weights": weights, "delta": delta_id}
    info = json.loads(json.dumps(info))
    info["fingerprint"] = json_sha256(info)
    return info


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (a lock file in it) where the platform has ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield
        return
    with open(folder / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_record(folder: Path) -> dict | None:
    """The run record in ``folder`` (None when there is none); an unreadable one is an error."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise GenerationMismatchError(f"{path} is unreadable; use another --out") from None
    if not isinstance(old, dict):
        raise GenerationMismatchError(f"{path} is not a generation record; use another --out")
    return old


def prepare_folder(folder: str | Path, info: dict) -> str | None:
    """Make ``folder``'s record say ``info`` (a `fingerprint`); returns a note when stale images were removed.

    Raises `GenerationMismatchError` when the folder holds images of another request.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        old = _read_record(folder)
        if old is not None and old.get("fingerprint") == info["fingerprint"]:
            return None
        note = None
        if old is not None:
            if any(old.get(k) != info[k] for k in _REQUEST_KEYS):
                raise GenerationMismatchError(
                    f"{folder} holds images made from other prompts or settings "
                    f"(model {old.get('model')!r}, delta {old.get('delta')!r}, {old.get('rows')} rows, "
                    f"settings {old.get('settings')}); use another --out")
            stale = sorted(folder.glob("[0-9]*.png"))
            for p in stale:
                p.unlink()
            note = (f"the weights of model {info['model']!r} changed since the images in {folder} were drawn: "
                    f"{len(stale)} stale images removed and redrawn")
        atomic.write_json(folder / MANIFEST, info)
        return note


def check_folder(folder: str | Path, info: dict, rank: int) -> None:
    """Check that ``folder``'s record is ``info`` exactly; never writes or removes anything.

    What processes other than 0 do after process 0 has prepared the folder: a record that
    differs means this process loaded other weights (or settings) than process 0.
    """
    folder = Path(folder)
    old = _read_record(folder)  # written atomically: no lock needed to read it whole
    if old is None or old.get("fingerprint") != info["fingerprint"]:
        differs = ("no record" if old is None else
                   ", ".join(k for k in (*_REQUEST_KEYS, "weights") if old.get(k) != info[k]) or "fingerprint")
        raise GenerationMismatchError(
            f"process {rank} does not agree with process 0 on {folder / MANIFEST} ({differs} differ): "
            "every process must load the same model, delta and settings")


def _process_group_barrier() -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("world_size > 1 needs the processes joined (accelerate launch) or a barrier")
    dist.barrier()


def prepare_shared(folder: str | Path, info: dict, *, rank: int = 0, world_size: int = 1,
                   barrier: Callable[[], None] | None = None) -> str | None:
    """`prepare_folder` in process 0, then a barrier, then `check_folder` in the others.

    Call it in every process with the same arguments.  ``barrier`` waits for all processes
    (default: the torch.distributed process group accelerate set up).  Process 0's error is
    raised after the barrier, so the others never wait for it in vain (they then fail the check).
    Returns process 0's note about removed stale images (None elsewhere).
    """
    if world_size <= 1:
        return prepare_folder(folder, info)
    wait = barrier or _process_group_barrier
    note, error = None, None
    if rank == 0:
        try:
            note = prepare_folder(folder, info)
        except Exception as err:  # re-raised once every process has passed the barrier
            error = err
    wait()
    if error is not None:
        raise error
    if rank != 0:
        check_folder(folder, info, rank)
    return note


def batches(rows: Sequence[BenchmarkRow], settings: SamplingSettings) -> list[tuple[float, list[int]]]:
    """(guidance, row indices) of every batch: rows grouped by guidance (first-seen order), cut by batch size."""
    groups: dict[float, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(float(r.guidance if r.guidance is not None else settings.guidance_scale), []).append(i)
    size = max(1, settings.batch_size)
    return [(g, idx[s:s + size]) for g, idx in groups.items() for s in range(0, len(idx), size)]


def complete_png(path: Path) -> bool:
    """Whether ``path`` is a file ending with a PNG's IEND chunk (empty and truncated files are not)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            if fh.tell() < 57:  # signature + IHDR + IEND
                return False
            fh.seek(-len(_PNG_END), 2)
            return fh.read() == _PNG_END
    except OSError:
        return False


def pending(folder: str | Path, rows: Sequence[BenchmarkRow], settings: SamplingSettings, rank: int = 0,
            world_size: int = 1) -> list[tuple[float, list[int]]]:
    """This process's batches that still lack at least one complete image in ``folder``."""
    folder = Path(folder)
    return [(g, idx) for g, idx in shard(batches(rows, settings), rank, world_size)
            if not all(complete_png(folder / image_name(i)) for i in idx)]


def _draw_batch(pipe, rows: Sequence[BenchmarkRow], settings: SamplingSettings, guidance: float,
                chunk: list[int]) -> list[Image.Image]:
    run_settings = dataclasses.replace(settings, guidance_scale=guidance)
    return generate(pipe, [rows[i].prompt for i in chunk], [rows[i].seed for i in chunk], run_settings)


def draw(pipe, rows: Sequence[BenchmarkRow], settings: SamplingSettings,
         progress: Callable[[int], None] | None = None) -> list[Image.Image]:
    """The images of ``rows`` in order, drawn batch by batch (`batches`), kept in memory."""
    images: list[Image.Image | None] = [None] * len(rows)
    for guidance, chunk in batches(rows, settings):
        for i, im in zip(chunk, _draw_batch(pipe, rows, settings, guidance, chunk)):
            images[i] = im
        if progress is not None:
            progress(len(chunk))
    return images


def draw_pending(pipe, rows: Sequence[BenchmarkRow], settings: SamplingSettings, folder: str | Path, *,
                 rank: int = 0, world_size: int = 1, progress: Callable[[int], None] | None = None) -> list[int]:
    """Draw this process's batches that lack an image into a prepared ``folder``; returns the rows drawn."""
    folder = Path(folder)
    drawn: list[int] = []
    for guidance, chunk in pending(folder, rows, settings, rank, world_size):
        images = _draw_batch(pipe, rows, settings, guidance, chunk)
        for i, im in zip(chunk, images):
            atomic.save_image(folder / image_name(i), im)
        drawn.extend(chunk)
        if progress is not None:
            progress(len(chunk))
    return drawn


def run_generation(pipe, rows: Sequence[BenchmarkRow], settings: SamplingSettings, folder: str | Path, *,
                   model: str = "", delta_id: str | None = None, weights: str | None = None, rank: int = 0,
                   world_size: int = 1, progress: Callable[[int], None] | None = None,
                   notes: list[str] | None = None, barrier: Callable[[], None] | None = None) -> list[int]:
    """Prepare ``folder`` (`prepare_shared`) and draw this process's unfinished batches; returns rows drawn.

    ``weights``: `weights_digest` of ``pipe`` before ``delta_id`` was applied (default: of
    ``pipe`` as it is now).  A note about redrawn stale images is appended to ``notes``.
    Call it in every process with the same arguments (``rank``/``world_size`` from
    `distributed_state`); wait for all processes before reading the folder.
    """
    folder = Path(folder)
    info = fingerprint(rows, settings, model, delta_id, weights if weights is not None else weights_digest(pipe))
    note = prepare_shared(folder, info, rank=rank, world_size=world_size, barrier=barrier)
    if note is not None and notes is not None:
        notes.append(note)
    return draw_pending(pipe, rows, settings, folder, rank=rank, world_size=world_size, progress=progress)


def load_images(folder: str | Path, indices: Sequence[int]) -> list[Image.Image]:
    """The PNGs of ``indices`` from ``folder`` (RGB, fully read); missing or unreadable ones are an error."""
    folder = Path(folder)
    missing = [i for i in indices if not (folder / image_name(i)).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: {len(missing)} images missing (first: {image_name(missing[0])}); "
                                "did every process finish?")
    out = []
    for i in indices:
        try:
            with Image.open(folder / image_name(i)) as im:
                out.append(im.convert("RGB"))
        except (OSError, ValueError) as err:
            raise GenerationMismatchError(f"{folder / image_name(i)} is unreadable ({str(err).splitlines()[0]}); "
                                          "delete it and rerun to redraw it") from None
    return out
