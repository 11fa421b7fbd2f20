"""The `erasekit` Typer application; each command module registers its commands on it.

Its group is the CLI's error boundary (`erasekit.cli.errors`): user errors end as one line, exit code 2.
"""

import typer

from .common import quiet_libraries
from .errors import ErrorBoundaryGroup

app = typer.Typer(cls=ErrorBoundaryGroup, add_completion=False, no_args_is_help=True,
                  help="Erase concepts from text-to-image diffusion models.")


@app.callback()
def _root() -> None:
    quiet_libraries()
