"""benchmarks/experiments: every config is valid, bad ones are one-line errors, and a run measures an erasure."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("experiments_run", ROOT / "benchmarks" / "experiments" / "run.py")
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)
CONFIGS = sorted((ROOT / "benchmarks" / "experiments").glob("*/*.yaml"))


def test_every_stored_config_is_valid():
    assert CONFIGS and run.main(["--check", *map(str, CONFIGS)]) == 0


@pytest.mark.parametrize("text, message", [
    ("concepts: [circle]\nruns: [{method: nope}]\n", "unknown method 'nope'"),
    ("concepts: [circle]\nruns: [{method: esd-u, preset: fast}]\n", "has no preset 'fast'"),
    ("concepts: [circle]\nruns: [{method: uce, overrides: {etaa: 1}}]\n", "etaa"),
    ("concepts: [circle]\nruns: [{method: uce, seeds: 3}]\n", "unknown run keys"),
    ("concepts: [hexagon]\nruns: [{method: uce}]\n", "hexagon"),
    ("runs: [{method: uce}]\n", "needs 'concepts' and 'runs'"),
])
def test_bad_configs_are_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert run.main(["--check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_labels_and_configs_follow_the_runs(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("concepts: [red]\nruns:\n  - {method: esd-u, preset: shapes-retain, overrides: {iterations: 7}}\n"
                    "  - {method: uce, anchor: ''}\n")
    doc = run.load(path)
    first, second = doc["runs"]
    assert first["label"] == "esd-u:shapes-retain iterations=7"
    assert first["config"].iterations == 7 and first["config"].preserve_weight == 12.0
    assert second["label"] == "uce anchor=''" and second["config"].eta == 10.0  # the shapes preset


@pytest.mark.slow
def test_a_run_measures_the_erasure_and_writes_json_and_markdown(tmp_path, shapes_pipe, all_threads):
    path = tmp_path / "topic" / "circle.yaml"
    path.parent.mkdir()
    path.write_text("about: uce on circle\nconcepts: [circle]\nper_tier: 4\npreserve: 4\nruns: [{method: uce}]\n")
    doc = run.load(path)
    rows = run.execute(doc, pipe=shapes_pipe)
    (row,) = rows
    assert row["original"]["explicit"] >= 0.5 and row["erased"]["explicit"] <= row["original"]["explicit"] / 3
    out = run.write(path, doc, rows, root=tmp_path / "results")
    assert json.loads(out.with_suffix(".json").read_text())["rows"][0]["delta_id"] == row["delta_id"]
    assert "| uce | circle |" in out.with_suffix(".md").read_text()
