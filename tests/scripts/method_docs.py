"""Write the settings table of every method page (docs/methods/<name>.md) from the method's config.

The table sits between ``<!-- settings:start -->`` and ``<!-- settings:end -->``: one row per
config field (less the run plumbing: progress, checkpoints, caches), the paper's default (``sd``)
and the value each preset sets, and whether the field is an extension beyond the paper.

    PYTHONPATH=src python tests/scripts/method_docs.py           # rewrite the tables
    PYTHONPATH=src python tests/scripts/method_docs.py --check   # exit 1 when a table is stale

``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"
PLUMBING = {"progress", "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "resume", "trajectory_cache",
            "preserve_cache", "clip_model"}


def _cell(value) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return "`" + text.replace("|", "\\|") + "`"


def settings_table(name: str) -> str:
    from erasekit.methods.base import get_method

    cls = get_method(name).config_cls
    extensions = {n for klass in cls.__mro__ for n in getattr(klass, "EXTENSIONS", ())}
    presets = list(cls.PRESETS)
    head = "| setting | sd (paper) | " + " | ".join(presets) + " | beyond the paper | description |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for field, info in cls.model_fields.items():
        if field in PLUMBING:
            continue
        values = [_cell(cls.PRESETS[p][field]) if field in cls.PRESETS[p] else "" for p in presets]
        inherited = (getattr(k, "model_fields", {}).get(field) for k in cls.__mro__)
        description = next((i.description for i in inherited if i is not None and i.description), "")
        description = description.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{field}` | {_cell(info.default)} | " + " | ".join(values)
                     + f" | {'yes' if field in extensions else ''} | {description} |")
    note = (f"Generated from `{cls.__module__}.{cls.__name__}` by `tests/scripts/method_docs.py`; "
            "a preset's empty cell keeps the default.")
    return "\n".join([note, "", *lines])


def updated(name: str, text: str) -> str:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"docs/methods/{name}.md has no {START} ... {END} block")
    return text[: start + len(START)] + "\n" + settings_table(name) + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    from erasekit.methods.base import list_methods

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for name in list_methods():
        path = DOCS / f"{name}.md"
        text = path.read_text(encoding="utf-8")
        new = updated(name, text)
        if new != text:
            stale.append(str(path))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print("stale settings tables (run tests/scripts/method_docs.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
