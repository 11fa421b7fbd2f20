"""Resolve a ``--model`` value to a diffusers pipeline.

``shapes`` is the shipped Shapes world; any other value is a local diffusers
folder, a single-file checkpoint, or a Hub id loaded with ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch

SHAPES_ID = "shapes"
from ..world.assets_paths import SHAPES_MODEL_DIR as SHAPES_DIR


class ModelNotFoundError(RuntimeError):
    """A model could not be resolved; the message is one line, meant for the user."""


def shapes_model_dir() -> Path:
    if not (SHAPES_DIR / "model_index.json").exists():
        raise ModelNotFoundError(
            f"the shipped Shapes model is missing from {SHAPES_DIR}; "
            "rebuild it with scripts/train_world.sh or reinstall erasekit"
        )
    return SHAPES_DIR


def resolve_model_path(model: str) -> str:
    """Return a loadable folder path or Hub id, after checking local candidates."""
    if model == SHAPES_ID:
        return str(shapes_model_dir())
    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "model_index.json").exists():
            raise ModelNotFoundError(f"{path} is a folder but not a diffusers pipeline (no model_index.json)")
        return str(path)
    return model


def load_pipeline(model: str, device: str = "cpu", dtype: torch.dtype = torch.float32, pipeline_cls=None):
    """Load a text-to-image pipeline; offline failures raise ModelNotFoundError with one line."""
    from diffusers import DiffusionPipeline

    target = resolve_model_path(model)
    cls = pipeline_cls or DiffusionPipeline
    try:
        if Path(target).is_file():
            from diffusers import StableDiffusionPipeline

            pipe = (pipeline_cls or StableDiffusionPipeline).from_single_file(target, dtype=dtype)
        else:
            pipe = cls.from_pretrained(target, dtype=dtype)
    except (OSError, ValueError) as err:  # hub unreachable, missing files, bad repo id
        if Path(target).exists():
            raise ModelNotFoundError(f"could not load pipeline from {target}: {str(err).splitlines()[0]}") from err
        raise ModelNotFoundError(
            f"model {model!r} is not a local folder and could not be fetched from the Hub (offline?); "
            f"download it elsewhere and pass its local diffusers folder, e.g. --model /path/to/stable-diffusion-v1-5"
        ) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def is_shapes_world(pipe) -> bool:
    """True for the shipped Shapes pipeline (or an export of it), judged by its model card."""
    import json

    path = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    card = Path(str(path)) / "erasekit.json" if path else None
    if card is None or not card.exists():
        return False
    return json.loads(card.read_text()).get("name") == SHAPES_ID


def general_prompts(pipe, n: int, exclude_words: list[str]) -> list[str]:
    """Prompts standing for 'everything else' the model draws (COCO for SD, random captions for Shapes)."""
    if is_shapes_world(pipe):
        from ..world.prompts import general_captions

        return general_captions(n, exclude_words=exclude_words)
    from ..eval.benchmarks import coco_prompts

    return coco_prompts(n)
