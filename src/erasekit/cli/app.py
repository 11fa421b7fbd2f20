"""The `erasekit` Typer application; each command module registers its commands on it."""

import typer

from .common import quiet_libraries

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Erase concepts from text-to-image diffusion models.")


@app.callback()
def _root() -> None:
    quiet_libraries()
