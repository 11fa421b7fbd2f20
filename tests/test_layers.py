"""The package's layering and module sizes, read off the source (no imports are executed).

Layers, lowest first: world -> models -> concepts -> training -> methods -> eval -> export -> cli.
A module may import from its own layer and the ones below, never from one above; every import
counts, including those inside functions.  Top-level modules are placed explicitly:
``erasekit/generation.py`` (sampling images from a pipeline) belongs to ``models``, and
``erasekit/__init__.py`` is the public API above every layer (it may re-export anything).
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "erasekit"
LAYERS = ["world", "models", "concepts", "training", "methods", "eval", "export", "cli"]
TOP_LEVEL = {"generation": "models", "__init__": "api", "__main__": "api"}
RANK = {name: i for i, name in enumerate(LAYERS)} | {"api": len(LAYERS)}
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _dotted(path: Path, root: Path = SRC) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def layer_of(dotted: list[str]) -> str:
    """The layer of module ``erasekit.<...>`` given as its dotted parts (``['erasekit', 'models', 'ddim']``)."""
    if len(dotted) == 1:
        return "api"
    head = dotted[1]
    if head in RANK and head != "api":
        return head
    if head in TOP_LEVEL:
        return TOP_LEVEL[head]
    raise AssertionError(f"erasekit.{head} is in no layer: add it to LAYERS or TOP_LEVEL in tests/test_layers.py")


def imported_modules(path: Path, root: Path = SRC) -> list[tuple[int, list[str]]]:
    """(line, dotted parts) of every erasekit module ``path`` (under ``root``) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _dotted(path, root) if path.name == "__init__.py" else _dotted(path, root)[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")) for a in node.names if a.name.split(".")[0] == "erasekit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            else:
                target = node.module.split(".")
            if target[0] != "erasekit":
                continue
            if node.module is None or len(target) == 1:  # `from . import x` / `from erasekit import x`: x is a module
                found += [(node.lineno, target + [a.name]) for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def test_the_walker_sees_relative_and_function_local_imports(tmp_path):
    probe = tmp_path / "erasekit" / "models" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import erasekit.world.render\n"
                     "def f():\n    from ..methods.base import get_method\n    from . import delta\n")
    found = sorted(imported_modules(probe, tmp_path))
    assert found == [(1, ["erasekit", "world", "render"]), (3, ["erasekit", "methods", "base"]),
                     (4, ["erasekit", "models", "delta"])]
    assert [layer_of(t) for _, t in found] == ["world", "methods", "models"]


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = []
    for path in _modules():
        own = layer_of(_dotted(path))
        for line, target in imported_modules(path):
            other = layer_of(target)
            if RANK[other] > RANK[own]:
                upward.append(f"{path.relative_to(SRC)}:{line} ({own}) imports {'.'.join(target)} ({other})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_every_module_belongs_to_a_layer():
    for path in _modules():
        layer_of(_dotted(path))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_module_has_at_most_500_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines (at most {MAX_LINES}): split it by job"
