"""Docstrings say what the code computes: short, and free of the project's internal history.

Every docstring in ``src/`` (module, class, function) is at most 40 lines; no file in
``src/``, ``README.md`` or ``docs/`` cites internal history (stop numbers, issue numbers,
``#12``-style references).  Measurements live in ``docs/experiments/`` as tables.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
MAX_DOCSTRING_LINES = 40
HISTORY = re.compile(
    r"\bstops?[ -]\d+\b"                       # "Stop 22", "stop-17"
    r"|\bissues? #?\d+\b"                      # "issue 6", "issue #6"
    r"|(?<![\w&#/])#\d{1,4}\b(?![0-9a-fA-F])",  # "#12" (not "#ff0000", not "&#8212;", not URLs' anchors)
    re.IGNORECASE)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg"}


def _python_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _docstrings(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield getattr(node, "name", "<module>"), getattr(node, "lineno", 1), doc


def long_docstrings() -> list[str]:
    out = []
    for path in _python_files():
        for name, line, doc in _docstrings(path):
            n = len(doc.splitlines())
            if n > MAX_DOCSTRING_LINES:
                out.append(f"{path.relative_to(ROOT)}:{line} {name}: {n} lines")
    return out


def _history_files() -> list[Path]:
    files = [p for p in SRC.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    files += [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    return [p for p in files if p.exists()]


def history_mentions() -> list[str]:
    out = []
    for path in _history_files():
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in HISTORY.finditer(line):
                out.append(f"{path.relative_to(ROOT)}:{i}: {m.group(0)!r}")
    return out


def test_the_history_pattern_catches_what_it_should():
    hits = ["Stop 22: the anchor", "as in stop-17", "issue 6's bar", "see #12 for why"]
    misses = ["colour #ff0000", "#000000", "&#8212;", "stops the loop", "stop_step 3", "issues a warning"]
    assert all(HISTORY.search(s) for s in hits)
    assert not any(HISTORY.search(s) for s in misses)


def test_docstrings_are_at_most_40_lines():
    assert long_docstrings() == []


def test_no_internal_history_in_src_readme_or_docs():
    assert history_mentions() == []


if __name__ == "__main__":  # list the offenders
    print("\n".join(long_docstrings() + history_mentions()))
