"""The documentation a newcomer follows: README -> `erasekit ls methods` -> docs/methods/<m>.md -> the module."""

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from erasekit.methods.base import get_method, list_methods

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("method_docs", ROOT / "tests" / "scripts" / "method_docs.py")
method_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(method_docs)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
README_LINES = 160


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("name", list_methods())
def test_every_method_has_a_page_naming_its_module_presets_and_sources(name):
    page = (ROOT / "docs" / "methods" / f"{name}.md").read_text()
    info = get_method(name)
    module = re.search(r"\*\*Module:\*\*\s+`([\w.]+)`", page).group(1)
    assert importlib.import_module(module) and info.config_cls.__module__.startswith(module), module
    for preset in ["sd", *info.config_cls.PRESETS]:
        assert f"**{preset}**" in page, preset
    assert "](../faithfulness.md)" in page and "](../experiments/" in page
    assert f"| [{name}](docs/methods/{name}.md) |" in (ROOT / "README.md").read_text()


def test_settings_tables_are_generated_from_the_configs():
    assert method_docs.main(["--check"]) == 0


_est_spec = importlib.util.spec_from_file_location("estimate_docs", ROOT / "tests" / "scripts" / "estimate_docs.py")
estimate_docs = importlib.util.module_from_spec(_est_spec)
_est_spec.loader.exec_module(estimate_docs)


@pytest.mark.slow  # the estimate traces the SD-1.5 and SDXL UNets on the meta device: about 2 minutes
def test_memory_and_time_tables_are_generated_from_the_estimate_and_the_measurements():
    assert estimate_docs.main(["--check"]) == 0


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_LINES
    head = "\n".join(lines[:6])
    assert "make demo" in head and "make test" in head
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "from erasekit import load_pipeline, get_concept, get_method, apply_delta, revert_delta, evaluate" in \
        "\n".join(lines)


def test_relative_links_in_readme_and_docs_resolve():
    broken = []
    for path in _markdown_files():
        for target in LINK.findall(path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert broken == []
