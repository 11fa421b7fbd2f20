"""The steps-to-the-bar table: the first checkpoint that meets both bars, and means over the pairs all reached."""

from __future__ import annotations

import pytest
from eval_helpers import load_script


def _row(scenario, method, seed, checkpoints, steps_run=150, stopped_at=None):
    return {"scenario": scenario, "method": method, "seed": seed, "original_rate": 0.9, "every": 10,
            "per_tier": 16, "preserve": 32, "steps_run": steps_run, "stopped_at": stopped_at, "run_seconds": 30.0,
            "checkpoints": [{"step": s, "seconds": 2.0 * s, "rate": r, "preservation": k,
                             "meets": script().meets(r, 0.9, k) if k is not None else False}
                            for s, r, k in checkpoints]}


def script():
    return load_script("benchmarks/experiments/trust_steps_to_bar.py")


def test_the_bars_need_a_fivefold_fall_and_the_preservation():
    s = script()
    assert s.meets(0.18, 0.9, 0.9) and not s.meets(0.19, 0.9, 1.0) and not s.meets(0.0, 0.9, 0.89)
    assert s.meets(7 / 48, 35 / 48, 1.0)  # exactly a fivefold fall, whose quotient rounds to 4.999...


def test_the_table_reports_the_first_checkpoint_that_meets_both_bars():
    rows = [_row("object", "trust", 0, [(10, 0.5, None), (20, 0.1, 0.8), (30, 0.1, 0.95), (40, 0.0, 1.0)], 80, 40),
            _row("object", "salun", 0, [(10, 0.1, 0.92)]),
            _row("style", "trust", 0, [(10, 0.3, None), (20, 0.2, None)], 200),
            _row("style", "salun", 0, [(10, 0.1, 0.95)])]
    lines = script().markdown(rows).splitlines()
    body = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in lines if line.startswith("| object")
            or line.startswith("| style")}
    assert "| 30 | 60.0 | 0.10 / 0.90 | 0.95 | 80 (40) |" in body[("object", "trust", "0")]
    assert "| – | – | 0.20 / 0.90 | – | 200 |" in body[("style", "trust", "0")]
    # means over the pairs every method reached: object seed 0 only
    assert "Reached by every method (trust, salun): object seed 0." in lines
    assert "| trust | 1 of 2 | 30.0 | 60.0 |" in lines and "| salun | 2 of 2 | 10.0 | 20.0 |" in lines


def test_the_trajectory_lists_every_measured_checkpoint_with_its_fall():
    rows = [_row("combination", "trust", 1, [(2, 0.45, None), (4, 0.0, 0.8), (6, 0.09, 0.95)], 40, 40)]
    lines = [line for line in script().trajectory(rows).splitlines() if line.startswith("| combination")]
    assert lines == ["| combination | trust | 1 | 2 | 0.45 / 0.90 | 2.0 | – | no |",
                     "| combination | trust | 1 | 4 | 0.00 / 0.90 | inf | 0.80 | no |",
                     "| combination | trust | 1 | 6 | 0.09 / 0.90 | 10.0 | 0.95 | yes |"]


def test_overrides_apply_to_every_method_or_to_the_one_named():
    s = script()
    got = s.method_overrides(["lr=0.01", "trust:mask_every=5", "retain_kv_weight=0.03"], ["trust", "salun"])
    assert got == {"trust": {"lr": 0.01, "mask_every": 5, "retain_kv_weight": 0.03},
                   "salun": {"lr": 0.01, "retain_kv_weight": 0.03}}


def test_a_setting_is_named_in_its_table():
    row = _row("object", "trust", 0, [(10, 0.1, 0.95)])
    row["overrides"] = {"lr": 0.01}
    lines = script().markdown([row, _row("object", "salun", 0, [(10, 0.1, 0.95)])]).splitlines()
    assert "Overrides of the `shapes` presets: trust: lr=0.01; salun: none." in lines


def test_the_comparison_lines_up_settings_and_averages_the_pairs_all_reached():
    fast = [_row("object", "trust", 0, [(10, 0.1, 0.95)]), _row("style", "trust", 0, [(20, 0.1, 0.9)])]
    for row in fast:
        row["overrides"] = {"regularizer": "none"}
    slow = [_row("object", "trust", 0, [(10, 0.5, None), (30, 0.1, 0.95)]),
            _row("style", "trust", 0, [(10, 0.3, None)], 200)]
    table = script().comparison({"base": slow, "no-csr": fast})
    lines = table.splitlines()
    assert "scenario/seed pairs that every line reached: object seed 0." in lines[0]
    assert "| base | trust | none | 30 | – | 1 of 2 | 30.0 |" in lines
    assert "| no-csr | trust | regularizer=none | 10 | 20 | 2 of 2 | 10.0 |" in lines


def test_a_reference_column_averages_only_the_pairs_both_lines_reached():
    salun = [_row("object", "salun", 0, [(20, 0.1, 0.95)]), _row("style", "salun", 0, [(40, 0.1, 0.95)]),
             _row("attribute", "salun", 0, [(10, 0.5, None)])]
    trust = [_row("object", "trust", 0, [(10, 0.1, 0.95)]), _row("style", "trust", 0, [(20, 0.5, None)]),
             _row("attribute", "trust", 0, [(30, 0.1, 0.95)])]
    lines = script().comparison({"a": salun, "b": trust}, [("a", "salun")]).splitlines()
    assert lines[2].endswith("| steps / seconds vs a salun (pairs both reached) |")
    # object is the only pair both reached: 10 steps (20 s) against 20 steps (40 s)
    assert next(line for line in lines if line.startswith("| b |")).endswith("| 10.0 / 20.0 steps, 20.0 / 40.0 s (1) |")
    assert next(line for line in lines if line.startswith("| a |")).endswith("| – |")


def test_a_reference_without_rows_is_refused():
    with pytest.raises(ValueError, match="no rows for the references"):
        script().comparison({"a": [_row("object", "salun", 0, [(20, 0.1, 0.95)])]}, [("a", "sal")])


def test_a_set_value_reads_as_json_and_python_none_as_null():
    run = load_script("benchmarks/experiments/run.py")
    assert run.setting_value("None") is None and run.setting_value("null") is None
    assert run.setting_value("0.01") == 0.01 and run.setting_value("true") is True
    assert run.setting_value("cip") == "cip"
