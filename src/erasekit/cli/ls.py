"""`erasekit ls methods|concepts|scopes|detectors|attacks|presets|scenarios`: what is registered, on stdout."""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional

import typer

from .app import app
from .common import fail

DOCS = "docs/methods/{}.md"


class What(str, Enum):
    methods = "methods"
    concepts = "concepts"
    scopes = "scopes"
    detectors = "detectors"
    attacks = "attacks"
    presets = "presets"
    scenarios = "scenarios"


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def method_kind(info) -> str:
    """The method's registered family: 'closed-form' or 'fine-tune'."""
    return str(info.family)


def preset_names(config_cls) -> list[str]:
    return ["sd", *config_cls.PRESETS]


def method_rows() -> list[str]:
    from ..methods.base import get_method, list_methods

    rows = []
    for name in list_methods():
        info = get_method(name)
        rows.append(f"{name:9s} {method_kind(info):11s} presets: {', '.join(preset_names(info.config_cls)):28s} "
                    f"{DOCS.format(name)}  {info.summary}")
    return rows


def concept_rows(pack: Optional[str]) -> list[str]:
    from ..concepts.packs import PACKS, get_concept, list_concepts

    if pack is not None and pack not in PACKS:
        fail(str(PACKS.unknown(pack)))
    rows = []
    for name in list_concepts(pack):
        spec = get_concept(name)
        rows.append(f"{name:28s} {spec.kind:9s} targets: {', '.join(spec.targets[:4])}"
                    + (" ..." if len(spec.targets) > 4 else "") + f"  anchor: {spec.anchor!r}")
    return rows


def scope_rows() -> list[str]:
    from ..models.scopes import get_scope, list_scopes

    return [f"{name:15s} {get_scope(name).description}" for name in list_scopes()]


def detector_rows() -> list[str]:
    from ..eval import detectors

    lines = {}
    for line in (detectors.__doc__ or "").splitlines():  # "- ``name``: what it reads"
        if line.startswith("- ``") and "``:" in line:
            key, text = line[4:].split("``:", 1)
            lines[key] = text.strip()
    return [f"{name:9s} {lines.get(name, '')}".rstrip() for name in detectors.list_detectors()]


def attack_rows() -> list[str]:
    from ..eval.attacks.run import ATTACKS, attack_names

    rows = []
    for name in attack_names():
        config_cls = ATTACKS.get(name).config_cls
        rows.append(f"{name:12s} presets: {', '.join(preset_names(config_cls)):14s} {_first_line(config_cls.__doc__)}")
    return rows


def scenario_rows() -> list[str]:
    """The Shapes benchmark's scenarios (one YAML file each under erasekit/eval/tasks/shapes/)."""
    from ..eval.tasks import load_tasks

    return [f"{key:12s} erases {', '.join(t.concepts):16s} {t.title}  (erasekit/eval/tasks/shapes/{key}.yaml)"
            for key, t in load_tasks().items()]


def _value(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def preset_rows(method: Optional[str]) -> list[str]:
    """Each method's presets and the settings each one changes from the paper's defaults (``sd``)."""
    from ..methods.base import UnknownMethodError, get_method, list_methods

    try:
        names = [get_method(method).name] if method else list_methods()
    except UnknownMethodError as err:
        fail(str(err))
    rows = []
    for name in names:
        config_cls = get_method(name).config_cls
        rows.append(f"{name} ({config_cls.__name__})")
        rows.append("  sd: the paper's defaults")
        for preset, values in config_cls.PRESETS.items():
            rows.append(f"  {preset}: " + ", ".join(f"{k}={_value(v)}" for k, v in values.items()))
    return rows


@app.command("ls")
def ls(what: What = typer.Argument(..., help="What to list."),
       name: Optional[str] = typer.Argument(None, help="concepts: one pack (shapes, sd); presets: one method.")):
    """List what is registered: methods, concepts, scopes, detectors, attacks, presets or bench scenarios."""
    if name is not None and what not in (What.concepts, What.presets):
        fail(f"`erasekit ls {what.value}` takes no name (only concepts and presets do)")
    rows = {
        What.methods: method_rows,
        What.concepts: lambda: concept_rows(name),
        What.scopes: scope_rows,
        What.detectors: detector_rows,
        What.attacks: attack_rows,
        What.presets: lambda: preset_rows(name),
        What.scenarios: scenario_rows,
    }[what]()
    typer.echo("\n".join(rows))
