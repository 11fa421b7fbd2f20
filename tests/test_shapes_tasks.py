"""Shapes tasks are data (YAML) and one generator makes every Shapes probe prompt.

The prompt digests in tests/data/shapes_probes.json were recorded from the three generators this one
replaces (`tests/scripts/record_shapes_probes.py` writes the same keys from the current code).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from erasekit.eval.bench.store import digest
from erasekit.eval.probes import adherence_probes, preservation_probes, target_probes
from erasekit.eval.tasks import TaskError, get_task, load_tasks, parse_task, value_task
from erasekit.world.vocabulary import TIERS, load_vocabulary

RECORDED = json.loads((Path(__file__).parent / "data" / "shapes_probes.json").read_text())
# digest(scenario.as_dict()) of each scenario as the stored bench cells' fingerprints cover it
SCENARIO_DIGESTS = {"object": "db90a6c8f6ec37e98853", "style": "6844e04e0cae16957605",
                    "attribute": "ce608ba39fad5c548472", "combination": "3ffdeb496d00d2c9bbb2",
                    "conditional": "9a83e9b0f16e51131b87", "multi": "c0b72fd5e879cafe3520"}


def _sha(items) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def _probe_list(probes) -> list:
    return [[p.prompt, p.expected, p.seed, p.tier, p.target] for p in probes]


def _value_list(probes) -> list:
    return [[p.prompt, p.expected, p.seed] for p in probes]


def current_digests() -> dict[str, str]:
    out = {}
    for key, task in load_tasks().items():
        for tier in TIERS:
            out[f"scenario/{key}/{tier}"] = _sha(_probe_list(target_probes(task, tier, 96)))
        out[f"scenario/{key}/preservation"] = _sha(_probe_list(preservation_probes(task, 96)))
    for value in load_vocabulary().all_values:
        task = value_task(value)
        for tier in TIERS:
            out[f"value/{value}/{tier}"] = _sha(_value_list(target_probes(task, tier, 96)))
        out[f"value/{value}/preservation"] = _sha(_value_list(preservation_probes(task, 96)))
    for tier in TIERS:
        out[f"adherence/{tier}"] = _sha(_value_list(adherence_probes(tier, 128)))
    return out


def test_prompts_identical_to_the_recorded_generators():
    now = current_digests()
    assert set(now) == set(RECORDED)
    differ = [k for k in RECORDED if now[k] != RECORDED[k]["sha256"]]
    assert not differ, f"prompts changed for {differ[:5]}"


def test_scenarios_load_in_table_order_with_unchanged_fingerprints():
    tasks = load_tasks()
    assert list(tasks) == list(SCENARIO_DIGESTS)
    assert {k: digest(t.as_dict()) for k, t in tasks.items()} == SCENARIO_DIGESTS
    assert get_task("multi").multi and not get_task("object").multi


def test_a_new_scenario_is_one_file_and_bad_files_fail_in_one_line(tmp_path):
    text = (Path(__file__).parents[1] / "src/erasekit/eval/tasks/shapes/object.yaml").read_text()
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
