"""value_confusion / task_confusion: what the values an erasure must keep are drawn as."""

import json
from pathlib import Path

import pytest
import torch
from eval_helpers import load_script

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return load_script("benchmarks/value_confusion.py")


def _token_row(pipe, word: str) -> int:
    ids = pipe.tokenizer(word, add_special_tokens=False).input_ids
    assert len(ids) == 1, f"{word!r} is not one token"
    return ids[0]


@pytest.mark.slow
def test_a_colour_whose_word_reads_as_another_is_counted_as_drawn_as_that_colour(shapes_pipe):
    from erasekit.eval.measure import value_confusion

    before = value_confusion(shapes_pipe, "red", 30)
    assert before["attribute"] == "color" and "red" not in before["values"]
    assert sum(c["n"] for c in before["values"].values()) == 30
    assert before["values"]["orange"]["read"].get("orange", 0) >= before["values"]["orange"]["n"] - 1
    table = shapes_pipe.text_encoder.get_input_embeddings().weight
    orange, yellow = _token_row(shapes_pipe, "orange"), _token_row(shapes_pipe, "yellow")
    saved = table[orange].detach().clone()
    try:
        with torch.no_grad():
            table[orange] = table[yellow]  # "orange" now reads as "yellow" to the text encoder
        after = value_confusion(shapes_pipe, "red", 30)
    finally:
        with torch.no_grad():
            table[orange] = saved
    cell = after["values"]["orange"]
    assert cell["read"].get("yellow", 0) > cell["n"] // 2 and cell["kept"] < cell["n"] // 2
    assert after["values"]["blue"] == before["values"]["blue"]  # the other colours' prompts are untouched


@pytest.mark.slow
def test_a_combinations_kept_circle_whose_colour_word_reads_as_another_is_counted_as_drawn_so(shapes_pipe):
    from erasekit.eval.measure import task_confusion
    from erasekit.eval.tasks import get_task

    task = get_task("combination")
    before = task_confusion(shapes_pipe, task, 20)
    assert before["attributes"] == ["shape", "color"] and "circle/red" not in before["values"]
    assert {"circle/orange", "square/red", "circle/blue"} <= set(before["values"])
    table = shapes_pipe.text_encoder.get_input_embeddings().weight
    orange, yellow = _token_row(shapes_pipe, "orange"), _token_row(shapes_pipe, "yellow")
    saved = table[orange].detach().clone()
    try:
        with torch.no_grad():
            table[orange] = table[yellow]
        after = task_confusion(shapes_pipe, task, 20)
    finally:
        with torch.no_grad():
            table[orange] = saved
    cell = after["values"]["circle/orange"]
    assert cell["kept"] == 0 and cell["read"].get("circle/yellow", 0) >= cell["n"] - 1
    assert after["values"]["square/red"] == before["values"]["square/red"]


def test_the_confusion_table_groups_probes_by_their_named_values_and_counts_what_was_read():
    from erasekit.eval.measure import confusion_table
    from erasekit.eval.probes import Probe

    def probe(**expected):
        return Probe("p", expected, 0, "preservation")

    pairs = [(probe(shape="circle", color="orange"), {"shape": "circle", "color": "orange"}),
             (probe(shape="circle", color="orange"), {"shape": "square", "color": "yellow"}),
             (probe(shape="circle", color="orange"), {"shape": "square", "color": "yellow"}),
             (probe(shape="star", color="red"), {"shape": "star", "color": "red"}),
             (probe(shape="star"), {"shape": "star", "color": "blue"})]  # colour unnamed: skipped
    table = confusion_table(pairs, ("shape", "color"))
    assert table == {"circle/orange": {"n": 3, "kept": 1, "read": {"square/yellow": 2, "circle/orange": 1}},
                     "star/red": {"n": 1, "kept": 1, "read": {"star/red": 1}}}
    by_colour = confusion_table(pairs, ("color",))
    assert by_colour["orange"] == {"n": 3, "kept": 1, "read": {"yellow": 2, "orange": 1}}


def test_a_confusion_config_names_exactly_one_of_a_value_and_a_task(tmp_path):
    script = _script()
    for erased in ({}, {"value": "red", "task": "combination"}):
        path = tmp_path / "c.json"
        path.write_text(json.dumps({**erased, "per_tier": 4, "n_preserve": 6, "about": "x", "rows": []}))
        with pytest.raises(ValueError, match="exactly one"):
            script.load_config(path)


def test_a_rows_anchor_replaces_the_concepts_and_keys_its_stored_result():
    script = _script()
    config = {"task": "combination", "seed": 0, "per_tier": 4, "n_preserve": 6, "about": "x", "rows": []}
    plain, moved = {"name": "a", "method": "trust"}, {"name": "b", "method": "trust", "anchor": "red square"}
    assert script.erased_concept(config).anchor_prompts()[0] == "a green square"
    assert script.erased_concept(config, moved).anchor_prompts()[0] == "a red square"
    assert script.erased_concept(config, moved).target_prompts() == script.erased_concept(config).target_prompts()
    assert script.row_key(config, moved)["anchor"] == "red square" and "anchor" not in script.row_key(config, plain)


def test_measure_task_refuses_no_preservation_prompts_in_one_line():
    from erasekit.eval.measure import measure_task
    from erasekit.eval.tasks import value_task
    from erasekit.generation import SamplingSettings

    with pytest.raises(ValueError, match="at least one preservation prompt") as err:
        measure_task(None, value_task("red"), 4, 0, SamplingSettings(), None)
    assert "\n" not in str(err.value)


def test_the_page_row_names_each_values_misreadings_and_the_stopping_rule(tmp_path):
    script = _script()
    config = {"value": "red", "per_tier": 4, "n_preserve": 6, "about": "x",
              "rows": [{"name": "trust-a", "method": "trust", "overrides": {"lr": 0.01}}]}
    got = {"name": "trust-a", "iterations": 40, "stopped_at": 40, "presence": [[0, 0.9], [40, 0.05]],
           "erasure": {"target_rate": {"explicit": 0.25, "synonym": 0.5, "implicit": 0.0},
                       "preservation_adherence": {"both": 0.5}},
           "confusion": {"values": {"blue": {"n": 3, "kept": 3, "read": {"blue": 3}},
                                    "orange": {"n": 3, "kept": 0, "read": {"yellow": 2, "orange": 1}}}}}
    assert script.table_row(config, got) == ("| trust-a | trust | lr=0.01 | 0.25/0.50/0.00 | 0.50 | 3/3 | "
                                             "0/3 (yellow 2) | 40 | 0.05 at 40 (stopped) |")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**config, "rows": config["rows"] * 2}))
    with pytest.raises(ValueError, match="unique"):
        script.load_config(path)


def test_the_page_is_generated_from_the_stored_rows(monkeypatch):
    monkeypatch.chdir(ROOT)  # the script's paths are relative to the repository root
    script = _script()
    assert script.PAGE.read_text() == script.page()


def test_measure_task_hands_back_the_preservation_readings_it_drew(shapes_pipe):
    from erasekit.eval.detectors.shapes import ShapesConceptDetector
    from erasekit.eval.measure import measure_task, task_confusion, task_confusion_of, task_preservation_readings
    from erasekit.eval.tasks import get_task
    from erasekit.generation import SamplingSettings
    from erasekit.world.assets_paths import load_detector

    task, settings, reader = get_task("combination"), SamplingSettings(), ShapesConceptDetector(load_detector())
    pairs: list = []
    numbers, _ = measure_task(shapes_pipe, task, 1, 10, settings, reader, features=False, keep_readings=pairs)
    drawn_again = task_preservation_readings(shapes_pipe, task, 10, settings, reader)
    assert [(p.prompt, r) for p, r in pairs] == [(p.prompt, r) for p, r in drawn_again] and len(pairs) == 10
    kept = sum(all(r[a] == v for a, v in p.expected.items() if a in task.checked) for p, r in pairs)
    assert numbers["preservation_adherence"]["checked"] == kept / 10
    assert task_confusion_of(task, pairs) == task_confusion(shapes_pipe, task, 10, settings, reader)
