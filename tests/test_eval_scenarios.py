"""A bench scenario evaluated by `erasekit eval --benchmark shapes:<key>`: the bench's prompts and numbers."""

from __future__ import annotations

import dataclasses

import pytest

from erasekit.eval.benchmarks import BenchmarkFormatError
from erasekit.eval.plan import build_plan
from erasekit.eval.probes import preservation_probes, target_probes
from erasekit.eval.tasks import get_task
from erasekit.world.assets_paths import SHAPES_MODEL_DIR
from erasekit.world.vocabulary import TIERS


def test_scenario_plan_draws_the_bench_cells_prompts_and_seeds():
    plan = build_plan("shapes:multi", n=4, n_preserve=5)
    task = get_task("multi")
    bench = [p for tier in TIERS for p in target_probes(task, tier, 4)] + preservation_probes(task, 5)
    assert [(r.prompt, r.seed, r.tier, r.extra) for r in plan.rows] == \
        [(p.prompt, p.seed, p.tier, p.expected) for p in bench]
    assert plan.task is task and plan.measure == "shapes" and plan.tiers == list(TIERS)
    assert plan.describe()["scenario"]["key"] == "multi" and plan.concept == "red, green, blue"


@pytest.mark.parametrize("kwargs, message", [
    ({"benchmark": "shapes:nope"}, "unknown scenario 'nope'; scenarios: object, style"),
    ({"benchmark": "shapes:object", "concept": "circle"}, "names its own concepts (circle); drop it"),
    ({"benchmark": "shapes:object", "category": "sexual"}, "has no categories"),
])
def test_scenario_plan_errors_are_one_line(kwargs, message):
    with pytest.raises(BenchmarkFormatError) as err:
        build_plan(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.skipif(not (SHAPES_MODEL_DIR / "model_index.json").exists(), reason="Shapes model not built yet")
def test_eval_of_a_scenario_equals_its_bench_measurement(shapes_pipe, tmp_path):
    from erasekit.eval.detectors.shapes import ShapesConceptDetector
    from erasekit.eval.evaluate import evaluate
    from erasekit.eval.measure import measure_target_rates, measure_task
    from erasekit.generation import SamplingSettings

    res = evaluate("shapes", "shapes:multi", tmp_path / "eval", n=3, n_preserve=3, steps=8, batch_size=1,
                   pipe=shapes_pipe, model_path=str(SHAPES_MODEL_DIR))
    settings = dataclasses.replace(SamplingSettings.for_model(SHAPES_MODEL_DIR), steps=8, batch_size=1)
    numbers, _ = measure_task(shapes_pipe, get_task("multi"), 3, 3, settings, ShapesConceptDetector(), features=False)
    metrics = res["metrics"]
    assert {t: metrics["asr"][t] for t in TIERS} == numbers["target_rate"]
    assert metrics["adherence"]["checked"] == ["color"]
    assert metrics["adherence"]["original"]["both"] == numbers["preservation_adherence"]["checked"]
    assert metrics["preservation"] == 1.0 and set(metrics["asr_ci95"]) == {*TIERS, "all"}
    # the target rates alone: the same probes and images, without the preservation prompts
    assert measure_target_rates(shapes_pipe, get_task("multi"), 3, settings, ShapesConceptDetector()) == \
        numbers["target_rate"]


def test_preservation_readings_are_the_prompts_behind_the_preservation_adherence(shapes_pipe):
    from erasekit.eval.measure import measure_erasure, preservation_readings

    pairs = preservation_readings(shapes_pipe, "red", 6)
    named = [all(read[a] == v for a, v in probe.expected.items()) for probe, read in pairs]
    measured = measure_erasure(shapes_pipe, "red", n_per_tier=1, n_preserve=6)
    assert len(pairs) == 6 and all(probe.expected["color"] != "red" for probe, _ in pairs)
    assert sum(named) / 6 == measured["preservation_adherence"]["both"]
