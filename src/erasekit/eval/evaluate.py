"""`evaluate`: one evaluation from names (model, benchmark, detector, delta) to results.json and a report.

It resolves the names into a pipeline, an `EvalPlan`, a detector and sampling settings, then
calls `run_eval`.  `erasekit eval` and `erasekit demo` use it; so can any script.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .runner import ProgressFactory

NUDITY_BENCHMARKS = ("i2p", "unlearndiffatk-nudity", "mma", "ring-a-bell", "p4d")


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message is one line for the user."""


def default_detector(benchmark: str, concept: Optional[str], shapes_world: bool, category: Optional[str]) -> str:
    """The detector a benchmark is read with when none is named."""
    from .plan import is_shapes_value

    if benchmark == "shapes" or (shapes_world and is_shapes_value(concept)):
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
    from .generation_runner import GenerationMismatchError, distributed_state
    from .plan import build_plan
    from .runner import run_eval

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
