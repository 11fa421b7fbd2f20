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
def concepts(
    pack: Optional[str] = typer.Argument(None, help="A pack name, or 'show'."),
    name: Optional[str] = typer.Argument(None, help="With 'show': the concept to print."),
):
    """List concept packs, the concepts of one pack, or `concepts show NAME`: a concept as YAML.

    The YAML is a concept file: edit it and pass it back with `erase --concept FILE.yaml`.
    """
    from ..concepts.packs import list_concepts, list_packs

    if pack == "show":
        if name is None:
            fail("usage: erasekit concepts show NAME (e.g. shapes/circle)")
        _show(name)
        return
    if name is not None:
        fail(f"unexpected argument {name!r}; did you mean `erasekit concepts show {name}`?")
    if pack is None:
        for p in list_packs():
            console.print(f"{p:8s} {len(list_concepts(p))} concepts")
        return
    if pack not in list_packs():
        fail(f"unknown pack {pack!r} (packs: {', '.join(list_packs())}); `erasekit concepts show NAME` prints one concept")
    from ..concepts.packs import get_concept

    for qualified in list_concepts(pack):
        spec = get_concept(qualified)
        console.print(f"{qualified:34s} {spec.kind:9s} {spec.canonical}", soft_wrap=True)


def _show(name: str) -> None:
    """Print concept ``name`` (pack name or concept file) as YAML on stdout."""
    import yaml

    from .common import load_concept

    spec = load_concept(name)
    typer.echo(yaml.safe_dump(spec.to_dict(), sort_keys=False, allow_unicode=True, width=1000), nl=False)
