"""The `erasekit` command: one module per command group, all registered on one Typer app."""

# registration order is the order of `erasekit --help`
from . import generate, erase, harden, catalog, ls, env, export, evaluate, demo, bench, attack  # noqa: F401, I001
from .app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
