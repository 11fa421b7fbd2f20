"""Shapes tasks are data (YAML) and one generator makes every Shapes probe prompt.

tests/data/shapes_probes.json holds a digest of every prompt set (`tests/scripts/record_shapes_probes.py`),
so no change to the generator or the task files alters a prompt unnoticed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from erasekit.eval.bench.store import digest
from erasekit.eval.tasks import TaskError, get_task, load_tasks, parse_task

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("record_shapes_probes", ROOT / "tests" / "scripts" / "record_shapes_probes.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)
# digest(scenario.as_dict()) of each scenario as the stored bench cells' fingerprints cover it
SCENARIO_DIGESTS = {"object": "db90a6c8f6ec37e98853", "style": "6844e04e0cae16957605",
                    "attribute": "ce608ba39fad5c548472", "combination": "3ffdeb496d00d2c9bbb2",
                    "conditional": "9a83e9b0f16e51131b87", "multi": "c0b72fd5e879cafe3520"}


def test_prompts_identical_to_the_recorded_generators():
    recorded, now = json.loads(record.OUT.read_text()), record.current()
    assert set(now) == set(recorded)
    differ = [k for k in recorded if now[k] != recorded[k]]
    assert not differ, f"prompts changed for {differ[:5]}"


def test_scenarios_load_in_table_order_with_unchanged_fingerprints():
    tasks = load_tasks()
    assert list(tasks) == list(SCENARIO_DIGESTS)
    assert {k: digest(t.as_dict()) for k, t in tasks.items()} == SCENARIO_DIGESTS
    assert get_task("multi").multi and not get_task("object").multi


def test_a_new_scenario_is_one_file_and_bad_files_fail_in_one_line(tmp_path):
    text = (ROOT / "src/erasekit/eval/tasks/shapes/object.yaml").read_text()
    new = text.replace("key: object", "key: squares").replace("concepts: [circle]", "concepts: [square]")
    task = parse_task(new.replace("- {shape: circle}", "- {shape: square}").replace("- {shape: square}\n  - {shape: tri",
                                                                                    "- {shape: circle}\n  - {shape: tri"),
                      "squares.yaml")
    assert task.key == "squares" and task.targets == ({"shape": "square"},) and {"shape": "circle"} in task.preserve
    for bad, where in [(text.replace("{shape: star}", "{shape: moon}"), "'moon' is not a shape"),
                       (text.replace("partner: color", "partner: size"), "partner"),
                       (text + "\nfoo: 1\n", "foo"),
                       (text.replace("concepts: [circle]", "concepts: [circle, red]"), "2 concepts but 1 targets"),
                       ("- a list", "a mapping"), ("key: [", "not YAML")]:
        with pytest.raises(TaskError) as err:
            parse_task(bad, "x.yaml")
        assert where in str(err.value) and "\n" not in str(err.value) and str(err.value).startswith("x.yaml")
    with pytest.raises(TaskError, match="unknown scenario 'nope'; scenarios: object, style"):
        get_task("nope")
    with pytest.raises(TaskError, match=r"unknown scenario 'objekt' \(did you mean object\?\)"):
        get_task("objekt")
