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
    """Print ``message`` as one error line (a multi-line message is joined) and exit with code 2."""
    from rich.markup import escape

    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()] or ["failed"]
    text = lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")
    console.print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True)
    raise typer.Exit(code=2)


def note(message: str) -> None:
    """Print ``message`` as one note line (something valid that the user should know)."""
    from rich.markup import escape

    console.print(f"[yellow]note:[/] {escape(message)}", soft_wrap=True)


def load_model(model: str, device: str, family: Optional[str] = None):
    """The pipeline named by ``--model`` and its local path; unloadable models end as one line."""
    from ..models.loading import FAMILIES, ModelNotFoundError, load_pipeline, resolve_model_path

    if family is not None and family not in FAMILIES:
        fail(f"--family {family!r}: choose from {', '.join(FAMILIES)}")
    try:
        return load_pipeline(model, device=device, family=family), resolve_model_path(model)
    except ModelNotFoundError as err:
        fail(str(err))
    except Exception as err:  # noqa: BLE001 -- garbage or truncated checkpoints raise many library types
        from .errors import one_line

        if Path(model).exists():
            fail(f"--model {model}: could not load it ({type(err).__name__}: {one_line(err)}); is it a complete "
                 "diffusers folder or .safetensors checkpoint?")
        raise


def progress_bar():
    """The one bar layout (`erasekit.training.progress.rich_progress`) on the CLI's console, without an ETA."""
    from ..training.progress import rich_progress

    return rich_progress(remaining=False, console=console)


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


def load_deltas(paths: Optional[Path | list[Path]]) -> list:
    """The deltas of one ``--delta``/``--from`` folder or of several, in order ([] when none is given)."""
    if paths is None:
        return []
    return [load_delta(p) for p in ([paths] if isinstance(paths, Path) else paths)]


def apply_delta_arg(pipe, delta: Optional[Path | list[Path]]):
    """Load the delta(s) of ``--delta``/``--from`` and apply them to ``pipe`` in order; returns the last (or None).

    Each is checked against the model it expects (the model, then the deltas before it); a delta
    computed on top of another (``erase --from``) that is not applied before it is refused with
    that parent's id.
    """
    from ..models.delta import DeltaError, apply_delta

    deltas = load_deltas(delta)
    for d in deltas:
        try:
            apply_delta(pipe, d)
        except DeltaError as err:
            fail(str(err))
    return deltas[-1] if deltas else None


def chain_arg(pipe, deltas: list):
    """The one delta equal to ``deltas`` (`load_deltas`) applied to ``pipe`` in order (None for none).

    `erasekit.models.delta.chain_delta`: each is checked as `apply_delta_arg` does; ``pipe`` is
    left as it was.
    """
    from ..models.delta import DeltaError, chain_delta

    if not deltas:
        return None
    try:
        return chain_delta(pipe, deltas)
    except DeltaError as err:
        fail(str(err))


def load_concept(name: str):
    """A pack concept by name or a YAML/JSON concept file; unknown names fail with a hint at --target."""
    from ..concepts.packs import UnknownConceptError, get_concept
    from ..concepts.spec import ConceptSpec, ConceptSpecError

    try:
        if Path(name).suffix.lower() in (".yaml", ".yml", ".json"):
            if not Path(name).is_file():
                fail(f"concept file {name} does not exist")
            return ConceptSpec.from_file(name)
        return get_concept(name)
    except UnknownConceptError as err:
        first = str(err).split("; see list_concepts()")[0]
        fail(f"{first}; `erasekit concepts` lists the packs' concepts, and --target {name!r} erases your own wording")
    except (ConceptSpecError, OSError, ValueError) as err:
        fail(" ".join(line.strip() for line in str(err).splitlines() if line.strip()))


def read_mapping_file(path: Path, flag: str) -> dict:
    """The mapping in a YAML/JSON file (YAML is a superset of JSON); one-line errors name ``flag`` and the file."""
    import yaml

    if not path.is_file():
        fail(f"{flag} {path}: no such file" if not path.exists() else f"{flag} {path} is not a file")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        fail(f"{flag} {path}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at {err.start}); "
             "save it as UTF-8")
    except yaml.YAMLError as err:
        from .errors import one_line

        fail(f"{flag} {path}: {one_line(err)}")
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        fail(f"{flag} {path}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def config_overrides(config: Optional[Path], **values) -> dict:
    """The mapping in the ``--config`` YAML/JSON file, then the flags that were given."""
    data = read_mapping_file(config, "--config") if config else {}
    return {**data, **{k: v for k, v in values.items() if v is not None}}
