"""The trainer's progress bar: steps done, the latest loss, elapsed and remaining time."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def loss_progress(enabled: bool, description: str, total: int, start: int) -> Iterator[Callable[[float], None]]:
    """Yield ``advance(loss)``, which moves a rich bar one step; a no-op when not ``enabled``."""
    if not enabled:
        yield lambda loss: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, completed=start, loss="-")
        yield lambda loss: bar.update(task, advance=1, loss=f"{loss:.4g}")

