"""One evaluation end to end: from names (model, benchmark, detector, delta) to results.json and a report.

`evaluate` resolves the names into a pipeline, an `EvalPlan`, a detector and sampling
settings; `run_eval` generates (original, and erased when a delta is given; the one
generation path, `erasekit.eval.generate`), scores (`erasekit.eval.scoring`) and
reports (`erasekit.eval.report`).  `erasekit eval` and `erasekit demo` use it; so can
any script.  Works in one process or sharded under ``accelerate launch`` (every
process calls `run_eval` with the same arguments; each draws its shard of batches,
then the main process scores the merged folders and writes the report; other
processes get None).

Output folder layout::

    OUT/images/original/000000.png ...   (model as loaded)
    OUT/images/erased/000000.png ...     (model + delta, same prompts and seeds)
    OUT/grids/*.png, OUT/results.json, OUT/report.md, OUT/report.html
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from ..generation import SamplingSettings
from ..models.delta import apply_delta, library_versions, revert_delta
from .generate import draw_pending, fingerprint, load_images, pending, prepare_shared, weights_digest
from .plan import EvalPlan
from .report import write_report
from .scoring import score

ProgressFactory = Callable[[str, int], Callable[[int], None]]


def versions() -> dict[str, str]:
    """Library versions recorded with every result."""
    from importlib.metadata import PackageNotFoundError, version

    out = library_versions()
    for pkg in ("accelerate", "numpy", "scipy", "nudenet", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _seed_summary(plan: EvalPlan) -> dict[str, dict[str, Any]]:
    out = {}
    for tier in plan.tiers + (["preservation"] if plan.preservation else []):
        seeds = [r.seed for r in plan.rows if r.tier == tier]
        out[tier] = {"count": len(seeds), "first": seeds[:8], "min": min(seeds), "max": max(seeds)}
    return out


def eval_settings(plan: EvalPlan, detector, settings: SamplingSettings, *, model: str, model_path: str | None,
                  delta=None, delta_path=None, clip=None, inception_path=None, world_size: int = 1) -> dict:
    """The ``settings`` block of results.json: everything the numbers depend on."""
    delta_info = None
    if delta is not None:
        m = delta.manifest
        path = [str(p) for p in delta_path] if isinstance(delta_path, (list, tuple)) else delta_path
        delta_info = {"path": str(path) if isinstance(path, Path) else path, "delta_id": m.delta_id,
                      "method": m.method, "base_model": m.base_model, "parent": m.parent, "seed": m.seed}
        if "chain" in m.metrics:  # several deltas applied in order
            delta_info["chain"] = m.metrics["chain"]
    return {
        "model": model, "model_path": model_path, "delta": delta_info,
        "benchmark": plan.describe(), "detector": detector.settings(),
        "sampling": {**dataclasses.asdict(settings),
                     "per_row_guidance": any(r.guidance is not None for r in plan.rows),
                     "seed_rule": "per row from the benchmark (42 where it has no seed column)"},
        "seeds": _seed_summary(plan),
        "clip": clip.describe() if clip is not None else None,
        "inception": str(inception_path) if inception_path else None,
        "world_size": world_size, "versions": versions(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def generate_sets(pipe, plan: EvalPlan, out: Path, settings: SamplingSettings, *, model: str, delta=None,
                  rank: int = 0, world_size: int = 1, progress: ProgressFactory | None = None,
                  notes: list[str] | None = None, barrier: Callable[[], None] | None = None) -> list[str]:
    """Draw this process's share of every image set; returns the set names.

    Each set's folder is keyed on the digest of the model's weights (and the delta id), taken
    before any delta is applied; notes about redrawn stale images go to ``notes``.  With several
    processes only process 0 prepares a folder; ``barrier`` waits for all of them
    (`generate.prepare_shared`).
    """
    rows = plan.rows
    weights = weights_digest(pipe)
    sets = [("original", None)] + ([("erased", delta)] if delta is not None else [])
    for name, d in sets:
        folder = out / "images" / name
        delta_id = d.delta_id if d else None
        note = prepare_shared(folder, fingerprint(rows, settings, model, delta_id, weights), rank=rank,
                              world_size=world_size, barrier=barrier)
        if note is not None and notes is not None:
            notes.append(note)
        todo = sum(len(idx) for _, idx in pending(folder, rows, settings, rank, world_size))
        advance = progress(f"{name} images", todo) if progress and todo else None
        if d is not None and todo:
            apply_delta(pipe, d)
        try:
            draw_pending(pipe, rows, settings, folder, rank=rank, world_size=world_size, progress=advance)
        finally:
            if d is not None and todo:
                revert_delta(pipe, d)
    return [name for name, _ in sets]


def _truncation_notes(pipe, plan: EvalPlan) -> list[str]:
    """A note when the text encoder truncates some of the plan's prompts (named by tier and case, not text)."""
    tok = getattr(pipe, "tokenizer", None)
    limit = getattr(tok, "model_max_length", None)
    if tok is None or not isinstance(limit, int) or limit > 100_000 or not plan.rows:
        return []
    lengths = tok([r.prompt for r in plan.rows], truncation=False)["input_ids"]
    long = [r for r, ids in zip(plan.rows, lengths) if len(ids) > limit]
    if not long:
        return []
    return [f"{len(long)} prompt(s) exceed the text encoder's {limit} tokens and were truncated "
            f"(first: tier {long[0].tier}, case {long[0].case_number})"]


def run_eval(pipe, plan: EvalPlan, detector, out: str | Path, *, settings: SamplingSettings, model: str,
             model_path: str | None = None, delta=None, delta_path=None, clip=None, inception=None,
             inception_path=None, shapes=None, notes: list[str] | None = None, state=None,
             progress: ProgressFactory | None = None) -> dict | None:
    """Generate, score and report one evaluation; returns results (main process) or None (others)."""
    out = Path(out)
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    notes = list(notes or []) + _truncation_notes(pipe, plan)
    names = generate_sets(pipe, plan, out, settings, model=model, delta=delta, rank=rank, world_size=world,
                          progress=progress, notes=notes,
                          barrier=state.wait_for_everyone if state is not None and world > 1 else None)
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
    indices = list(range(len(plan.rows)))
    images = {name: load_images(out / "images" / name, indices) for name in names}
    metrics, records, _ = score(plan, images, detector, clip=clip, inception=inception, shapes=shapes)
    results = {
        "format": "erasekit-eval", "format_version": 1,
        "metrics": metrics,
        "settings": eval_settings(plan, detector, settings, model=model, model_path=model_path, delta=delta,
                                  delta_path=delta_path, clip=clip, inception_path=inception_path, world_size=world),
        "notes": list(plan.notes) + notes,
        "per_image": records,
    }
    results["paths"] = write_report(out, results, images, plan.tiers + (["preservation"] if plan.preservation else []))
    return results


NUDITY_BENCHMARKS = ("i2p", "unlearndiffatk-nudity", "mma", "ring-a-bell", "p4d")


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message is one line for the user."""


def default_detector(benchmark: str, concept: Optional[str], shapes_world: bool, category: Optional[str]) -> str:
    """The detector a benchmark is read with when none is named."""
    from .plan import is_shapes_value

    if benchmark == "shapes" or benchmark.startswith("shapes:") or (shapes_world and is_shapes_value(concept)):
        return "shapes"
    if benchmark in NUDITY_BENCHMARKS or category == "sexual" or concept == "nudity":
        return "nudenet"
    raise EvaluationError(f"choose a detector for benchmark {benchmark!r} with --detector (shapes, nudenet, q16)")


def detector_options(name: str, threshold: Optional[float], labels: Optional[str], clip) -> dict:
    """Keyword arguments of detector ``name`` from the evaluation's options."""
    if name != "nudenet" and (threshold is not None or labels):
        raise EvaluationError("--threshold and --labels are settings of the nudenet detector")
    if name == "nudenet":
        opts = {}
        if threshold is not None:
            opts["threshold"] = threshold
        if labels:
            opts["labels"] = [x.strip() for x in labels.split(",") if x.strip()]
        return opts
    if name == "q16":
        return {"clip": clip}
    return {}


def evaluate(model: str, benchmark: str, out: Path, *, delta: Optional[Path | list[Path]] = None, concept: Optional[str] = None,
             n: Optional[int] = None, n_preserve: int = 32, category: Optional[str] = None,
             adversarial: Optional[list[Path]] = None, detector: Optional[str] = None,
             threshold: Optional[float] = None, labels: Optional[str] = None, clip: Optional[str] = None,
             inception: Optional[str] = None, steps: Optional[int] = None, guidance: Optional[float] = None,
             batch_size: Optional[int] = None, device: Optional[str] = None, pipe=None, model_path=None,
             progress: ProgressFactory | None = None):
    """Generate, score and report one evaluation; the results dict on the main process, else None.

    ``pipe``/``model_path`` reuse a loaded pipeline instead of loading ``model``.  ``delta``: one
    delta folder, or several applied in order and evaluated as one (`models.delta.chain_delta`).
    Failures the user can fix raise `EvaluationError` (or the loader's/detector's own one-line errors).
    """
    from ..generation import SamplingSettings
    from ..models.delta import DeltaMismatchError, WeightDelta, chain_delta
    from ..models.loading import is_shapes_world, load_pipeline, resolve_model_path
    from .benchmarks import BenchmarkFormatError
    from .clip import ClipEncoder, ClipUnavailableError
    from .detectors import DetectorUnavailableError, UnknownDetectorError, get_detector
    from .generate import GenerationMismatchError, distributed_state
    from .plan import build_plan

    paths = [delta] if isinstance(delta, (str, Path)) else list(delta or [])
    deltas = [WeightDelta.load(p) for p in paths]  # unreadable or non-finite: refused before the model loads
    state = distributed_state()
    if pipe is None:
        pipe = load_pipeline(model, device=device or str(state.device))
        model_path = resolve_model_path(model)
    shapes_world = is_shapes_world(pipe)
    try:
        d = chain_delta(pipe, deltas) if deltas else None
    except DeltaMismatchError as err:
        raise EvaluationError(f"{' '.join(str(err).split())} (model {model})") from None
    notes: list[str] = []
    try:
        plan = build_plan(benchmark, concept=concept, n=n, n_preserve=n_preserve, category=category,
                          adversarial=[str(a) for a in adversarial or []], shapes_world=shapes_world)
        name = detector or default_detector(benchmark, concept, shapes_world, category)
        encoder = None
        if name == "q16" or plan.measure == "clip" or clip:
            try:
                encoder = ClipEncoder.load(clip, device=str(state.device))
            except ClipUnavailableError as err:
                if name == "q16" or clip or os.environ.get("ERASEKIT_CLIP"):
                    raise
                notes.append(f"CLIP score and COCO preservation skipped: {err}")
        if plan.task is not None and name != "shapes":
            raise EvaluationError(f"benchmark {benchmark!r} is read with the shapes detector (got --detector {name})")
        det = get_detector(name, **detector_options(name, threshold, labels, encoder))
        shapes = None
        if shapes_world or name == "shapes":
            from .detectors.shapes import ShapesConceptDetector

            shapes = det if isinstance(det, ShapesConceptDetector) else ShapesConceptDetector()
        inception_model = inception_file = None
        if inception or os.environ.get("ERASEKIT_INCEPTION"):
            from .fid import inception_path, load_inception

            inception_file = inception_path(inception)
            inception_model = load_inception(inception_file, device=str(state.device))
        else:
            notes.append("FID not computed: not available offline without Inception weights (--inception PATH)")
        if plan.measure == "clip" and encoder is None and inception_model is None:
            plan.preservation, plan.measure = [], None  # nothing could read them: do not draw them
        settings = SamplingSettings.for_model(model_path, steps=steps, guidance_scale=guidance, batch_size=batch_size)
        return run_eval(pipe, plan, det, out, settings=settings, model=model, model_path=model_path, delta=d,
                        delta_path=paths[0] if len(paths) == 1 else paths or None,
                        clip=encoder, inception=inception_model, inception_path=inception_file,
                        shapes=shapes, notes=notes, state=state, progress=progress)
    except (BenchmarkFormatError, DetectorUnavailableError, UnknownDetectorError, GenerationMismatchError) as err:
        raise EvaluationError(str(err)) from err
