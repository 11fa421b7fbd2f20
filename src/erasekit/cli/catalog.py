"""`erasekit methods` and `erasekit concepts`: what is registered."""

from __future__ import annotations

from typing import Optional

import typer

from .app import app

from .common import console, fail


@app.command()
def methods():
    """List the registered erasure methods."""
    from ..methods.base import get_method, list_methods

    for name in list_methods():
        console.print(f"{name:10s} {get_method(name).summary}", soft_wrap=True)


@app.command()
def concepts(pack: Optional[str] = typer.Argument(None)):
    """List concept packs, or the concepts of one pack."""
    from ..concepts.packs import list_concepts, list_packs

    if pack is None:
        for p in list_packs():
            console.print(f"{p:8s} {len(list_concepts(p))} concepts")
        return
    if pack not in list_packs():
        fail(f"unknown pack {pack!r} (packs: {', '.join(list_packs())})")
    for name in list_concepts(pack):
        console.print(name)

