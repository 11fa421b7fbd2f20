"""The README's results summary and BENCHMARKS.md's invocation lines, generated from benchmark cells."""

import json
from pathlib import Path

from erasekit.eval.bench.main import README, BenchPaths
from erasekit.eval.bench.modes import BenchPlan
from erasekit.eval.bench.markdown import (SUMMARY_END, SUMMARY_START, _cell_invocations, meets_bars, summary_table,
                                        write_summary)
from erasekit.eval.bench.cells import BenchRun
from erasekit.eval.bench.store import CellStore


def _cell(explicit, synonym=None, preservation=1.0, scenario="object", invocation=None):
    cell = {"scenario": scenario, "label": "x", "target_rate": {"explicit": explicit, "synonym": synonym
                                                                if synonym is not None else explicit, "implicit": 0.5},
            "preservation": preservation, "same_run_as": None}
    return cell | ({"invocation": invocation} if invocation else {})


def _run():
    plan = BenchPlan("full", ["object", "attribute"], ["uce", "trust"], per_tier=32, n_preserve=48, n_adversarial=0)
    return BenchRun(plan, results={
        "object": {"original": _cell(0.9, 0.8), "uce": _cell(0.0, 0.1, 0.979), "trust": _cell(0.2, 0.2, 0.95)},
        "attribute": {"original": _cell(1.0, scenario="attribute"), "uce": _cell(0.1, 0.1, 0.8958, "attribute"),
                      "trust": _cell(0.0, 0.0, 0.9, "attribute")}})


def test_bars_need_a_fivefold_drop_and_ninety_percent_preservation():
    original = _cell(0.9, 0.8)  # bar rate 0.85 (mean of explicit and synonym)
    assert meets_bars(original, _cell(0.17, 0.17, 0.9)) is True      # exactly 5x, exactly 0.9
    assert meets_bars(original, _cell(0.18, 0.18, 0.99)) is False    # 4.7x
    # exactly 5x in counts (7/48 against 35/48), though 7/48 * 5 rounds above 35/48
    assert meets_bars(_cell(35 / 48, 35 / 48), _cell(7 / 48, 7 / 48, 1.0)) is True
    assert meets_bars(_cell(35 / 48, 35 / 48), _cell(7 / 48 + 1e-6, 7 / 48 + 1e-6, 1.0)) is False
    assert meets_bars(original, _cell(0.0, 0.0, 0.8958)) is False    # shown as 0.896, not rounded up to 0.90
    assert meets_bars(_cell(0.0), _cell(0.0)) is None                # the original never drew it: no verdict
    assert meets_bars(None, _cell(0.0)) is None


def test_summary_has_one_row_per_method_and_one_column_per_scenario():
    text = summary_table(_run())
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| method | object (circle) | attribute (red) |"
    assert rows[1] == "| original | 0.85 | 1.00 |"
    assert rows[2] == "| uce | 0.05 at 0.979 ✓ | 0.10 at 0.896 ✗ |"
    assert rows[3] == "| trust | 0.20 at 0.950 ✗ | 0.00 at 0.900 ✓ |"
    assert "5x below" in text and "at least 0.9" in text and "6 stored cells" in text


def test_write_summary_replaces_only_the_text_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{SUMMARY_START}\nstale table\n{SUMMARY_END}\nafter\n")
    assert write_summary(readme, _run())
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n" + SUMMARY_START + "\n")
    assert text.endswith(SUMMARY_END + "\nafter\n") and "stale table" not in text
    assert "| uce | 0.05 at 0.979 ✓" in text
    first = text
    assert write_summary(readme, _run()) and readme.read_text() == first  # nothing time-dependent

    plain = tmp_path / "NOTES.md"
    plain.write_text("no markers\n")
    assert not write_summary(plain, _run()) and plain.read_text() == "no markers\n"
    assert not write_summary(tmp_path / "missing.md", _run())


def test_only_the_default_full_run_rewrites_the_readme_summary(tmp_path):
    assert BenchPaths.default(quick=False).summary == README
    assert BenchPaths.default(quick=True).summary is None
    assert BenchPaths.default(quick=False, results=tmp_path).summary is None
    assert BenchPaths.default(quick=False, report=tmp_path / "B.md").summary is None


def test_cells_record_their_invocation_and_the_header_groups_by_it(tmp_path):
    store = CellStore(tmp_path, invocation="erasekit bench --scenario object")
    cell = {"scenario": "object", "label": "uce", "value": 1}
    path = store.save(cell)
    assert json.loads(Path(path).read_text())["invocation"] == "erasekit bench --scenario object"
    assert cell["invocation"] == "erasekit bench --scenario object"  # the run's own copy says so too
    kept = "erasekit bench"
    path = store.save({"scenario": "object", "label": "trust", "invocation": kept})
    assert json.loads(Path(path).read_text())["invocation"] == kept  # a cell read back keeps its own
    assert "invocation" not in json.loads(CellStore(tmp_path).save({"scenario": "a", "label": "b"}).read_text())

    run = _run()
    run.results["object"]["uce"]["invocation"] = kept
    run.results["attribute"]["uce"]["invocation"] = kept
    run.results["object"]["trust"]["same_run_as"] = "uce"  # a twin's copy is not counted
    lines = _cell_invocations(run)
    assert lines == ["  - not recorded (cells measured before they recorded it): 3 cells (attribute 2, object 1)",
                     "  - `erasekit bench`: 2 cells (attribute 1, object 1)"]
