"""One evaluation end to end: generate (original, and erased when a delta is given), score, report.

Works in one process or sharded under ``accelerate launch`` (every process calls
`run_eval` with the same arguments; each draws its shard of batches, then the main
process scores the merged folders and writes the report; other processes get None).

Output folder layout::

    OUT/images/original/000000.png ...   (model as loaded)
    OUT/images/erased/000000.png ...     (model + delta, same prompts and seeds)
    OUT/grids/*.png, OUT/results.json, OUT/report.md, OUT/report.html
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..generation import SamplingSettings
from ..models.delta import apply_delta, library_versions, revert_delta
from .generation_runner import draw_pending, fingerprint, load_images, pending, prepare_shared, weights_digest
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
    (`generation_runner.prepare_shared`).
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
