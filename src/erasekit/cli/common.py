"""What every command shares: the console, one-line failures, loading models, deltas and concepts, progress bars."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def quiet_libraries() -> None:
    """Library chatter (hub retries, deprecations, torchvision fallbacks, progress bars) stays off the terminal."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("huggingface_hub", "diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        tlog.set_verbosity_error()
        dlog.disable_progress_bar()  # erasekit draws its own progress (rich)
        tlog.disable_progress_bar()
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass


def fail(message: str) -> None:
    """Print ``message`` as one error line and exit with code 2."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code=2)


def load_model(model: str, device: str, family: Optional[str] = None):
    """The pipeline named by ``--model`` and its local path."""
    from ..models.loading import ModelNotFoundError, load_pipeline, resolve_model_path

    try:
        return load_pipeline(model, device=device, family=family), resolve_model_path(model)
    except ModelNotFoundError as err:
        fail(str(err))


def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def progress_factory(bar):
    """A `ProgressFactory` that adds one task to ``bar`` per call."""
    def make(label: str, total: int):
        task = bar.add_task(label, total=total)
        return lambda k: bar.advance(task, k)

    return make


def load_delta(path: Optional[Path]):
    """The delta in run folder ``path`` (None when no path is given)."""
    if path is None:
        return None
    from ..models.delta import DeltaError, WeightDelta

    try:
        return WeightDelta.load(path)
    except (DeltaError, FileNotFoundError) as err:
        fail(str(err))


def apply_delta_arg(pipe, delta: Optional[Path]):
    """Load the delta of ``--delta``/``--from`` and apply it to ``pipe``; returns it (or None)."""
    if delta is None:
        return None
    from ..models.delta import DeltaError, apply_delta

    d = load_delta(delta)
    try:
        apply_delta(pipe, d)
    except DeltaError as err:
        fail(str(err))
    return d


def load_concept(name: str):
    """A pack concept by name, or a YAML/JSON concept file."""
    from ..concepts.packs import UnknownConceptError, get_concept
    from ..concepts.spec import ConceptSpec, ConceptSpecError

    try:
        if Path(name).suffix in (".yaml", ".yml", ".json") and Path(name).exists():
            return ConceptSpec.from_file(name)
        return get_concept(name)
    except (UnknownConceptError, ConceptSpecError) as err:
        fail(str(err))


def config_overrides(config: Optional[Path], **values) -> dict:
    """The mapping in the ``--config`` YAML/JSON file, then the flags that were given."""
    import yaml

    data = yaml.safe_load(config.read_text()) if config else {}
    if data is not None and not isinstance(data, dict):
        fail(f"{config}: expected a mapping of config overrides")
    return {**(data or {}), **{k: v for k, v in values.items() if v is not None}}
