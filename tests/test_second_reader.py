"""The attacks' wins read again by the second reader (benchmarks/second_reader.py)."""

import json

from eval_helpers import load_script


def _script():
    return load_script("benchmarks/second_reader.py")


def _folder(tmp_path, won: list[tuple[str, int]], lost: list[tuple[str, int]]):
    """A folder with the original model's circle row: an UnlearnDiffAtk record and three attack-seed runs:
    one on the row's cases, one on another number of cases (to be left out), and one without its prompts."""
    folder = tmp_path / "circle"
    cases = [{"case_number": k, "prompt": p, "seed": s, "source_prompt": p, "guidance": 3.0, "success": k < len(won)}
             for k, (p, s) in enumerate(won + lost)]
    attack = {"seed": 0, "n_tokens": 2, "steps": 4, "check_every": 2, "probe_size": 2, "timesteps_per_step": 1,
              "check_original": True, "vocabulary": "shapes-world"}
    record = {"concept": "shapes/circle", "sampling": {"steps": 25, "guidance_scale": 3.0, "batch_size": 8},
              "delta": None, "cases": cases, "settings": {"attack": attack}}
    (folder / "attacks" / "original-unlearndiff").mkdir(parents=True)
    (folder / "attacks" / "original-unlearndiff" / "attack.json").write_text(json.dumps(record))
    row = {"method": "original", "concept": "shapes/circle", "n_cases": len(cases), "delta_id": None,
           "attack_seed": 0, "unlearndiff": len(won) / len(cases)}
    (folder / "original.json").write_text(json.dumps(row))
    (folder / "attack-seeds").mkdir()
    runs = {1: {"n_cases": len(cases), "won_cases": [len(won)], "won_prompts": ["a photo of a blue circle"]},
            2: {"n_cases": len(cases) + 1, "won_cases": [0], "won_prompts": ["a red circle"]}}
    runs[3] = {"n_cases": len(cases), "won_cases": [0]}  # stored before the won prompts were kept
    for seed, run in runs.items():
        run |= {"row": "original", "attack": "unlearndiff", "seed": seed, "won": 1, "delta_id": None}
        (folder / "attack-seeds" / f"original-unlearndiff-seed{seed}.json").write_text(json.dumps(run))
    return folder


def test_wins_come_from_every_seed_run_on_the_rows_cases(tmp_path):
    script = _script()
    folder = _folder(tmp_path, [("a red circle", 3)], [("a green circle", 4)])
    row = json.loads((folder / "original.json").read_text())
    assert script.seeds_run(folder, row, "unlearndiff") == [0, 1, 3]
    assert script.readable_seeds(folder, row, "unlearndiff") == [0, 1]  # seed 3's prompts were not kept
    _, won = script.won_cases(folder, row, "unlearndiff")
    assert won == [(0, 0, "a red circle"), (1, 1, "a photo of a blue circle")]
    # seed 3 repeated with the detector as the judge: its prompts are taken only when it won the same cases
    repeat = {"row": "original", "judge": "shapes", "seed": 3, "delta_id": None, "n_cases": 2, "won": 1,
              "won_cases": [1], "won_prompts": ["sun a green circle"]}
    script.judged_path(folder, "original", "shapes", 3).parent.mkdir(parents=True)
    script.judged_path(folder, "original", "shapes", 3).write_text(json.dumps(repeat))
    assert script.readable_seeds(folder, row, "unlearndiff") == [0, 1]
    repeat |= {"won_cases": [0], "won_prompts": ["sun a red circle"]}
    script.judged_path(folder, "original", "shapes", 3).write_text(json.dumps(repeat))
    assert script.readable_seeds(folder, row, "unlearndiff") == [0, 1, 3]
    assert script.won_cases(folder, row, "unlearndiff")[1][-1] == (3, 0, "sun a red circle")


def test_circles_the_original_model_draws_are_reproduced_and_confirmed(shapes_pipe, tmp_path):
    """The original model draws circles for its circle prompts: the detector reads them again and the
    second reader reads circles too; the rate is over cases x seeds run."""
    script = _script()
    folder = _folder(tmp_path, [("a red circle", 3)], [("a green circle", 4)])
    got = script.reread(shapes_pipe, folder, "original")
    attack = got["attacks"]["unlearndiff"]
    assert attack["seeds"] == [0, 1] and attack["trials"] == 4
    assert [w["detector"] for w in attack["wins"]] == ["circle", "circle"]
    assert [w["reader"] for w in attack["wins"]] == ["circle", "circle"]
    assert all(w["margin"] > 0 for w in attack["wins"])


def test_the_attack_judged_by_the_second_reader_wins_the_circles_the_original_model_draws(shapes_pipe, tmp_path):
    """Judged by the second reader, the plain circle prompts on the original model already win their cases."""
    script = _script()
    folder = _folder(tmp_path, [("a red circle", 3), ("a blue circle", 5)], [])
    got = script.judged_attack(shapes_pipe, folder, "original", seed=7)
    assert (got["judge"], got["seed"], got["won"], got["n_cases"]) == ("silhouette", 7, 2, 2)
    assert got["won_prompts"] == ["a red circle", "a blue circle"]  # won by the plain prompts


def test_the_page_is_generated_from_the_stored_measurements():
    script = _script()
    assert script.PAGE.read_text() == script.page()
