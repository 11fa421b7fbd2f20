"""Progress bars: one rich bar layout for every long loop, and the trainer's bar with the loss."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


def rich_progress(*fields: str, remaining: bool = True, console=None, transient: bool = False):
    """A rich ``Progress``: description, bar, done/total, the given task ``fields``, elapsed (and remaining) time.

    ``fields`` name extra task fields shown as ``<name> <value>`` (e.g. ``"loss"``).
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("[bold]{task.description}" if fields else "{task.description}"), BarColumn(),
               MofNCompleteColumn()]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    columns += [TimeElapsedColumn()] + ([TimeRemainingColumn()] if remaining else [])
    return Progress(*columns, console=console, transient=transient)


@contextlib.contextmanager
def loss_progress(enabled: bool, description: str, total: int, start: int) -> Iterator[Callable[[float], None]]:
    """Yield ``advance(loss)``, which moves a rich bar one step; a no-op when not ``enabled``."""
    if not enabled:
        yield lambda loss: None
        return
    with rich_progress("loss") as bar:
        task = bar.add_task(description, total=total, completed=start, loss="-")
        yield lambda loss: bar.update(task, advance=1, loss=f"{loss:.4g}")
