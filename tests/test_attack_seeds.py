"""Attack seeds of a robustness row: extra runs on the row's saved delta are stored once and reused, runs on
another delta are never pooled, and the summary shows and judges the rate pooled over the seeds."""

import json

import pytest

from erasekit.concepts.packs import get_concept
from erasekit.eval import attack_seeds
from erasekit.eval.attack_seeds import (StaleDeltaError, attack_text, pooled_row, result_path, run_attack_seeds,
                                        seed_counts)
from erasekit.eval.attacks.run import default_detector
from erasekit.eval.robustness_table import summary
from erasekit.generation import SamplingSettings
from erasekit.methods.base import get_method
from erasekit.models.loading import resolve_model_path


def _row(method, uda, delta_id=None, **extra):
    return {"method": method, "concept": "circle", "n_cases": 16, "plain": 0.0, "unlearndiff": uda, "ringabell": 0.0,
            "resurgence": 0.0, "adherence": 0.97, "delta_id": delta_id, **extra}


def _run(folder, label, seed, won, delta_id, attack="unlearndiff", n_cases=16):
    path = result_path(folder, label, attack, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"row": label, "attack": attack, "seed": seed, "n_cases": n_cases, "won": won,
                                "won_cases": list(range(won)), "delta_id": delta_id, "seconds": 1.0}))


def test_pooled_rate_sums_the_cases_won_over_the_seeds_of_the_same_delta(tmp_path):
    row = _row("uce+adv", 0.0, delta_id="d1")  # 0 of 16 under the preset's seed 0
    _run(tmp_path, "uce+adv", 1, 2, "d1")
    _run(tmp_path, "uce+adv", 2, 1, "d1")
    _run(tmp_path, "uce+adv", 3, 16, "d0")                       # an earlier delta of the row: not pooled
    _run(tmp_path, "uce+adv", 4, 9, "d1", n_cases=48)            # another number of cases: not pooled
    _run(tmp_path, "uce+adv", 0, 5, "d1")                        # the row's own seed: the row's count stands
    assert seed_counts(tmp_path, row, "unlearndiff") == {0: 0, 1: 2, 2: 1}
    pooled = pooled_row(tmp_path, row)
    assert pooled["unlearndiff"] == pytest.approx(3 / 48) and pooled["unlearndiff_n"] == 48
    assert pooled["ringabell"] == 0.0 and pooled["ringabell_n"] == 16  # no extra Ring-A-Bell runs
    assert attack_text(pooled, "unlearndiff").endswith("(3 seeds: 0, 2, 1 of 16)")
    assert row["unlearndiff"] == 0.0  # the stored row is not changed
    own = pooled_row(tmp_path, _row("uce", 0.5, delta_id="d2", attack_seed=101))
    assert own["unlearndiff_seeds"] == {101: 8}


def test_summary_judges_the_attack_bar_on_the_pooled_rate(tmp_path):
    folder = tmp_path / "circle"
    rows = [_row("original", 1.0, adherence=0.98), _row("uce", 0.5, "u"), _row("uce+adv", 0.0, "h"),
            _row("esd-x", 0.5, "e"), _row("esd-x+adv", 0.0625, "x")]  # 1 of 16 under its own seed
    folder.mkdir()
    for r in rows:
        (folder / f"{r['method']}.json").write_text(json.dumps(r))
    _run(folder, "uce+adv", 1, 2, "h")         # 2 of 32 over two seeds: 0.0625, above the bar
    for seed in (1, 2, 3):
        _run(folder, "esd-x+adv", seed, 0, "x")  # 1 of 64 over four seeds: 0.016, within it
    lines = {line.split(" | ")[1]: line for line in summary(tmp_path).splitlines() if line.startswith("| circle")}
    assert lines["uce+adv"].endswith("| no/yes/yes/yes/yes |") and "(2 seeds: 0, 2 of 16)" in lines["uce+adv"]
    assert lines["esd-x+adv"].endswith("| yes/yes/yes/yes/yes |") and "0.02 [" in lines["esd-x+adv"]


@pytest.fixture(scope="module")
def red_uce_row(shapes_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    info = get_method("uce")
    delta = info.erase(shapes_pipe, get_concept("red"), info.config_cls.for_world("shapes"))
    delta.save(folder / "deltas" / "uce")
    row = {"method": "uce", "concept": "red", "n_cases": 2, "attack_seed": None, "ringabell": 0.5,
           "delta_id": delta.delta_id}
    return folder, row


def test_extra_seeds_run_once_on_the_rows_delta_and_are_reused(shapes_pipe, red_uce_row, monkeypatch):
    folder, row = red_uce_row
    detector, name = default_detector(get_concept("red"), True)
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    runs = run_attack_seeds(shapes_pipe, folder, row, "ringabell", [0, 1], settings, detector, name)
    assert [r["seed"] for r in runs] == [1]  # the row's own seed (the preset's 0) is not run again
    assert not result_path(folder, "uce", "ringabell", 0).exists()
    stored = json.loads(result_path(folder, "uce", "ringabell", 1).read_text())
    assert stored["delta_id"] == row["delta_id"] and stored["n_cases"] == 2 and stored["won"] == len(stored["won_cases"])
    assert len(stored["won_prompts"]) == stored["won"] and all(isinstance(p, str) for p in stored["won_prompts"])
    assert seed_counts(folder, row, "ringabell") == {0: 1, 1: stored["won"]}

    def no_attack(*args, **kwargs):
        raise AssertionError("a stored seed was attacked again")

    monkeypatch.setattr(attack_seeds, "run_attack", no_attack)
    assert run_attack_seeds(shapes_pipe, folder, row, "ringabell", [1], settings, detector, name) == runs
    with pytest.raises(StaleDeltaError, match="not the delta row 'uce' measured"):
        run_attack_seeds(shapes_pipe, folder, {**row, "delta_id": "0" * 16}, "ringabell", [2], settings, detector, name)
    with pytest.raises(StaleDeltaError, match="no saved delta for row 'uce-x'"):  # a fresh clone has no deltas
        run_attack_seeds(shapes_pipe, folder, {**row, "method": "uce-x"}, "ringabell", [2], settings, detector, name)
