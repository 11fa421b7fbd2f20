"""Robustness rows as a bench report section: stored rows are read back, rates get Wilson intervals,
hardened rows are judged against the bars, and bad `bench --robustness` input is a one-line error."""

import json

import pytest
import torch

from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.eval.metrics import wilson_interval
from erasekit.eval.robustness import row_label
from erasekit.eval.robustness_table import preservation_interval, stored_rows, summary, unhardened_label
from eval_helpers import load_script


def _row(method, plain, uda, rab, res, adherence, **extra):
    return {"method": method, "concept": "circle", "n_cases": 16, "plain": plain, "unlearndiff": uda,
            "ringabell": rab, "resurgence": res, "adherence": adherence, **extra}


def test_summary_judges_hardened_rows_against_their_base_and_the_original(tmp_path):
    folder = tmp_path / "circle"
    folder.mkdir()
    rows = [_row("original", 0.875, 1.0, 0.9375, 0.0, 0.98),
            _row("uce", 0.0, 0.8125, 0.125, 0.0, 0.95),
            _row("uce+adv", 0.0, 0.0, 0.0, 0.0, 0.97),        # meets every bar
            _row("esd-x", 0.0, 0.5, 0.0, 0.0, 0.98),
            _row("esd-x+adv", 0.0625, 0.0, 0.0, 0.0, 0.80),   # plain got worse, preservation lost
            _row("salun++", 0.0, 0.5, 0.0, 0.0, 0.90)]         # a method whose name holds '+', not hardened
    for r in rows:
        (folder / f"{r['method']}.json").write_text(json.dumps(r))
    (folder / "attacks").mkdir()
    (folder / "attacks" / "x.json").write_text(json.dumps({"method": "ignored", "unlearndiff": 1.0}))
    assert set(stored_rows(tmp_path)[folder]) == {"original", "uce", "uce+adv", "esd-x", "esd-x+adv", "salun++"}
    lines = {line.split(" | ")[1]: line for line in summary(tmp_path).splitlines() if line.startswith("| circle")}
    assert lines["uce+adv"].endswith("| yes/yes/yes/yes/yes |")
    assert lines["esd-x+adv"].endswith("| yes/yes/yes/no/no |")
    assert lines["salun++"].endswith("| - |") and "(" not in lines["salun++"].split(" | ")[7]
    assert "0.00 [0.00, 0.19]" in lines["uce+adv"]  # 0 of 16 with its 95% Wilson interval
    lo, hi = wilson_interval(round(0.97 * 48), 48)  # rows without n_preserve were measured on 48 prompts
    # vs the original [the adherent count's Wilson interval over the original's adherence] (vs unhardened)
    assert f"{0.97 / 0.98:.2f} [{lo / 0.98:.2f}, {hi / 0.98:.2f}] ({0.97 / 0.95:.2f})" in lines["uce+adv"]


def test_summary_shows_a_rows_attack_floor_only_when_measured_on_the_delta_the_row_measured(tmp_path):
    folder = tmp_path / "circle"
    (folder / "attack-floor").mkdir(parents=True)
    rows = [_row("original", 0.875, 1.0, 0.9375, 0.0, 0.98),
            _row("uce", 0.0, 0.5, 0.0, 0.0, 0.95, delta_id="aaa"),
            _row("uce+adv", 0.0, 0.1, 0.0, 0.0, 0.97, delta_id="bbb"),
            _row("esd-x", 0.0, 0.5, 0.0, 0.0, 0.98, delta_id="ccc")]
    for r in rows:
        (folder / f"{r['method']}.json").write_text(json.dumps(r))
    floors = {"uce+adv": ("bbb", False, None), "uce": ("zzz", False, None),  # measured on another delta
              "esd-x": ("ccc", True, None)}                                  # without the concept's words
    for row, (delta_id, exclude, named_as) in floors.items():
        (folder / "attack-floor" / f"{row}.json").write_text(json.dumps(
            {"row": row, "delta_id": delta_id, "exclude_concept_words": exclude, "named_as": named_as,
             "won": 9, "trials": 64, "tries": 5, "repeats": 4}))
    lines = {line.split(" | ")[1]: line.split(" | ") for line in summary(tmp_path).splitlines() if line.startswith("| circle")}
    lo, hi = wilson_interval(9, 64)
    assert lines["uce+adv"][4] == f"9 / 64 = {9 / 64:.2f} [{lo:.2f}, {hi:.2f}]"
    assert lines["uce"][4] == lines["esd-x"][4] == lines["original"][4] == "-"


def test_preservation_interval_is_the_adherent_counts_wilson_interval_over_the_original():
    original = {"adherence": 47 / 48, "n_preserve": 48}
    row = {"adherence": 42 / 48, "n_preserve": 48}
    value, lo, hi = preservation_interval(row, original)
    w_lo, w_hi = wilson_interval(42, 48)
    assert (value, lo, hi) == pytest.approx((42 / 47, w_lo / (47 / 48), w_hi / (47 / 48)))
    assert lo < 0.95 < hi  # 0.89 of the original's does not rule out the 0.95 bar on 48 prompts
    wide = preservation_interval({"adherence": 21 / 24, "n_preserve": 24}, original)
    assert wide[2] - wide[1] > hi - lo  # fewer prompts, wider interval


def test_row_labels():
    assert row_label(None, None) == "original"
    assert row_label("uce", None) == "uce"
    assert row_label("uce", "adv", "-rw4") == "uce+adv-rw4"
    # method overrides: labelled by the harden tag, or by their own tag so that the unhardened row keeps one name
    assert row_label("trce", None, "-eta30", {"eta": 30}) == "trce-eta30"
    assert row_label("trce", "adv", "-unet", {"eta": 30}, "-eta30") == "trce-eta30+adv-unet"
    assert row_label("trce", None, "-unet", {"eta": 30}, "-eta30") == "trce-eta30"
    assert unhardened_label("trce-eta30+adv-unet") == "trce-eta30"
    # a replaced anchor is part of the erasure's name, so its delta never stands in for the concept's own anchor's
    assert row_label("trce", "adv", "-unet", {"eta": 30}, "-eta30", "star") == "trce-eta30-anchor-star+adv-unet"
    assert row_label("uce", None, anchor="star") == "uce-anchor-star"
    for label, base in (("kscu+adv-g1", "kscu"), ("salun++", None), ("salun+++adv", "salun++"), ("trce-t+rece", "trce-t"),
                        ("original", None), ("trce-t", None), ("trce+adv+rece", "trce"),
                        ("salun+++adv+rece-e6", "salun++")):
        assert unhardened_label(label) == base


def test_bench_robustness_input_errors_are_one_line():
    runner = CliRunner()
    for args, message in ((["--harden", "adv"], "--harden needs --robustness"),
                          (["--attack-seed", "1"], "--attack-seed needs --robustness"),
                          (["--robustness", "circle", "--harden", "foo"], "unknown hardening variant"),
                          (["--robustness", "circle", "--harden", "adv+foo"], "unknown hardening variant"),
                          (["--robustness", "c.yaml"], "concept names from the packs")):
        result = runner.invoke(app, ["bench", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_bench_robustness_rows_are_named_by_the_bare_concept(monkeypatch):
    """`bench --robustness red` measures the concept "red" (a pack name), not "shapes/red"."""
    from erasekit.cli import bench as bench_cli

    seen = {}

    def record(pipe, path, concepts, *rest):
        seen["c"], seen["seeds"] = concepts, rest[-1]
        raise SystemExit(0)  # stop before any measurement

    monkeypatch.setattr(bench_cli, "_robustness_rows", record)
    monkeypatch.setattr(bench_cli, "load_model", lambda model, device: (None, None))
    result = CliRunner().invoke(app, ["bench", "--robustness", "red", "--robustness", "shapes/circle",
                                      "--attack-seed", "1", "--attack-seed", "2"])
    assert result.exit_code == 0, result.output
    assert seen["c"] == ["red", "circle"] and seen["seeds"] == [1, 2]


def test_hardening_cost_counts_rounds_or_iterations_and_the_training_attack():
    from erasekit.eval.robustness import _harden_cost

    assert _harden_cost({"rounds": [{}, {}, {}]}) == {"harden_iterations": 3}  # rece: its rounds
    attacked = [{"loss_first": 1.0, "loss_last": 0.5}] * 4 + [{"loss_first": 3.0, "loss_last": 1.0}] * 10
    rece = _harden_cost({"rounds": [{}] * 3, "attack_rounds": attacked, "attack_iterations": 112})
    adv = _harden_cost({"iterations": 80, "attack_rounds": attacked, "attack_iterations": 112})
    for cost in (rece, adv):  # the mean over the last 10 attack rounds
        assert cost["train_attack"] == {"rounds": 14, "last10_loss_first": 3.0, "last10_loss_last": 1.0}
        assert cost["harden_attack_steps"] == 112
    assert rece["harden_iterations"] == 3 and adv["harden_iterations"] == 80


def test_the_training_attack_column_reads_no_search_for_a_random_attack():
    from erasekit.eval.robustness import _harden_cost
    from erasekit.eval.robustness_bars import train_loss

    searched = _harden_cost({"iterations": 4, "attack_rounds": [{"loss_first": 2.0, "loss_last": 1.0}] * 3})
    unsearched = _harden_cost({"iterations": 4, "attack_rounds": [{"loss_first": float("nan"),
                                                                   "loss_last": float("nan")}] * 3})
    assert train_loss(searched["train_attack"]) == "2.0000 -> 1.0000"
    assert train_loss(unsearched["train_attack"]) == "no search" and train_loss(None) == "-"


def test_a_stored_row_is_read_back_only_when_it_was_measured_with_the_settings_asked_for(tmp_path):
    from erasekit.eval.robustness import StoredRowMismatch, stored_row

    path = tmp_path / "uce.json"
    request = {"concept": "circle", "n_cases": 16, "seed": 0, "attack_seed": None, "per_tier": 32, "n_preserve": 48}
    assert stored_row(path, request) is None                       # nothing stored: measure it
    path.write_text(json.dumps({"method": "uce", "concept": "circle", "n_cases": 16}))
    assert stored_row(path, request) is None                       # no measurements yet: measure it
    row = _row("uce", 0.0, 0.8125, 0.125, 0.0, 0.95, seed=0, attack_seed=None)
    path.write_text(json.dumps(row))
    assert stored_row(path, request) == row                        # per_tier / n_preserve predate the row: not compared
    for change in ({"n_cases": 32}, {"seed": 1}, {"attack_seed": 101}, {"harden_overrides": {"epochs": 6}}):
        with pytest.raises(StoredRowMismatch, match="uce.json holds a row measured with other settings"):
            stored_row(path, {**request, **change})
    path.write_text(json.dumps({**row, "method_overrides": {"lr": 1e-3}}))
    with pytest.raises(StoredRowMismatch, match="method_overrides"):
        stored_row(path, request)                                  # stored with overrides, asked without


def test_a_row_records_its_erasure_settings_and_a_changed_preset_is_refused(tmp_path, monkeypatch):
    """A stored row measured under another preset is not read back as this one's, nor its delta reused."""
    from erasekit.eval.robustness import StoredRowMismatch, delta_settings, erase_config, erase_settings, stored_row
    from erasekit.methods.trust import TRuSTConfig

    settings = erase_settings(erase_config("trust", 0), "object")
    assert settings["lr"] == TRuSTConfig.PRESETS["shapes"]["lr"] and "progress" not in settings
    assert erase_settings(erase_config("trust", 0, {"lr": 0.5}), "object")["lr"] == 0.5
    path = tmp_path / "trust.json"
    row = _row("trust", 0.0, 0.8125, 0.125, 0.0, 0.95, seed=0, attack_seed=None)
    path.write_text(json.dumps({**row, "erase_settings": settings}))
    request = {"concept": "circle", "n_cases": 16, "seed": 0, "erase_settings": settings}
    assert stored_row(path, request)["method"] == "trust"
    monkeypatch.setitem(TRuSTConfig.PRESETS, "shapes", {**TRuSTConfig.PRESETS["shapes"], "lr": 0.5})
    changed = {**request, "erase_settings": erase_settings(erase_config("trust", 0), "object")}
    with pytest.raises(StoredRowMismatch, match="erase_settings"):
        stored_row(path, changed)

    class _Delta:  # what a saved delta's manifest records: the full config dump, runtime fields and all
        class manifest:
            config = {**TRuSTConfig.preset("shapes", lr=0.5, progress=False).model_dump(), "concept": "circle"}

    assert delta_settings(_Delta, TRuSTConfig, "object") == changed["erase_settings"] != settings


@pytest.mark.slow
def test_benchmark_script_refuses_a_folder_measured_at_another_resolution_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    stored = _row("uce", 0.0, 0.8125, 0.125, 0.0, 0.95, seed=0, attack_seed=None, per_tier=32, n_preserve=48)
    (tmp_path / "uce.json").write_text(json.dumps(stored))
    before = (tmp_path / "uce.json").read_bytes()
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"
    done = subprocess.run([sys.executable, str(script), "--concept", "circle", "--methods", "uce", "--no-original",
                           "--cases", "32", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "n_cases 16 (asked: 32)" in errors[0]
    assert (tmp_path / "uce.json").read_bytes() == before        # nothing lost


def test_summary_of_some_rows_keeps_the_originals_and_drops_seed_folders_without_them(tmp_path):
    circle, seed1 = tmp_path / "circle", tmp_path / "circle" / "seed1"
    seed1.mkdir(parents=True)
    for folder, rows in ((circle, [_row("original", 0.875, 1.0, 0.9375, 0.0, 0.98), _row("trust", 0.06, 0.62, 0.12, 0.04, 0.94),
                                   _row("uce", 0.0, 0.81, 0.12, 0.0, 0.85)]),
                         (seed1, [_row("uce", 0.0, 0.38, 0.06, 0.0, 0.85)])):
        for r in rows:
            (folder / f"{r['method']}.json").write_text(json.dumps(r))
    text = summary(tmp_path, {"trust"})
    shown = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith("| circle")]
    assert shown == [["| circle", "original"], ["| circle", "trust"]]


def test_the_trust_page_shows_the_stored_benchmark_rows_of_both_seeds():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "experiments" / "trust.md").read_text()
    block = re.search(r"<!-- trust-robustness-seeds:start -->\n(.*)<!-- trust-robustness-seeds:end -->", page, re.S)
    compared = load_script("benchmarks/experiments/trust_docs.py").COMPARED
    assert {"trust", "salun", "salun++", "esd-x", "esd-u"} <= compared
    expected = summary(root / "benchmarks" / "results" / "robustness-harden", compared)
    assert block and block.group(1).strip() == expected.strip()


def test_a_hardening_chain_applies_each_variant_in_turn_and_reuses_a_saved_first_step(tmp_path, shapes_pipe):
    """``uce+rece+rece``: the second rece hardens the first's result; with reuse, the first step saved as the
    ``uce+rece`` row's delta is read back, not recomputed, and the chain equals the two calls made by hand."""
    from erasekit.concepts.packs import get_concept
    from erasekit.eval.robustness import _harden_chain
    from erasekit.methods.base import get_method
    from erasekit.methods.harden import RECEConfig, harden

    spec = get_concept("circle")
    info = get_method("uce")
    base = info.erase(shapes_pipe, spec, info.config_cls.for_world("shapes"))
    once = harden(shapes_pipe, base, spec, RECEConfig.for_world("shapes"))
    once.save(tmp_path / "deltas" / "uce+rece")  # what the uce+rece row leaves behind
    by_hand = harden(shapes_pipe, once, spec, RECEConfig.for_world("shapes"))
    row: dict = {}
    chained = _harden_chain(shapes_pipe, base, spec, "rece+rece", row, tmp_path, "uce", 0, None, "", reuse=True)
    assert chained.delta_id == by_hand.delta_id and row["base_delta_id"] == base.delta_id  # what the audit checks
    assert [s["variant"] for s in row["harden_chain"]] == ["rece", "rece"]
    assert row["harden_chain"][0]["reused"] is True and "reused" not in row["harden_chain"][1]
    assert row["harden_iterations"] == f"{len(once.manifest.metrics['rounds'])}+{len(by_hand.manifest.metrics['rounds'])}"
    assert [c["method"] for c in chained.manifest.config["chain"]] == ["uce", "harden:rece", "harden:rece"]


def test_a_hardening_override_may_set_the_hardenings_own_seed_apart_from_the_rows(tmp_path, shapes_pipe):
    """The row's seed seeds the base erasure and, unless an override names another, the hardening."""
    from erasekit.concepts.packs import get_concept
    from erasekit.eval.robustness import _harden_chain
    from erasekit.methods.base import get_method

    spec, info = get_concept("circle"), get_method("uce")
    base = info.erase(shapes_pipe, spec, info.config_cls.for_world("shapes"))
    rows: list[dict] = [{}, {}]
    for row, overrides in zip(rows, (None, {"seed": 5})):
        _harden_chain(shapes_pipe, base, spec, "rece", row, tmp_path, "uce", 3, overrides, "", reuse=False)
    assert [r["harden_settings"]["seed"] for r in rows] == [3, 5]


def test_preservation_on_the_concepts_own_attribute_counts_only_that_attribute():
    from erasekit.eval.robustness_table import attribute_preservation_text

    original = {"concept": "circle", "adherence": 0.98, "n_preserve": 96,
                "adherence_by_attribute": {"shape": 0.99, "color": 0.99}}
    row = {"concept": "circle", "adherence": 0.875, "n_preserve": 96,   # colours drift, shapes mostly kept
           "adherence_by_attribute": {"shape": 0.9375, "color": 0.9375}}
    lo, hi = wilson_interval(90, 96)
    assert attribute_preservation_text(row, original) == f"shape: {0.9375 / 0.99:.2f} [{lo / 0.99:.2f}, {hi / 0.99:.2f}]"
    red = {**row, "concept": "red", "adherence_by_attribute": {"shape": 0.5, "color": 0.99}}
    assert attribute_preservation_text(red, original).startswith("color: 1.00")  # red is a colour: colour is counted
    assert attribute_preservation_text({"concept": "circle", "adherence": 0.9}, original) == "-"  # an older row


def test_chain_overrides_apply_to_the_last_step_or_one_dict_per_step():
    from erasekit.eval.robustness import chain_overrides
    from erasekit.eval.robustness_table import overrides_text

    assert chain_overrides(["adv", "rece"], {"epochs": 2}) == [{}, {"epochs": 2}]
    assert chain_overrides(["adv"], None) == [{}]
    per_step = [{"negative_guidance": 1.0}, {"module": "unet"}]
    assert chain_overrides(["adv", "adv"], per_step) == per_step
    with pytest.raises(ValueError, match="2 override dicts for a chain of 1"):
        chain_overrides(["adv"], per_step)
    assert overrides_text({"a": 1, "b": "x"}) == "a=1, b=x"
    assert overrides_text([{}, {"module": "unet"}]) == "-; module=unet"


@pytest.mark.slow
def test_a_screen_measures_tiers_and_preservation_only_and_its_delta_serves_the_full_run(shapes_pipe, tmp_path, monkeypatch):
    from erasekit.concepts.packs import get_concept
    from erasekit.eval import robustness
    from erasekit.eval.attacks.run import default_detector
    from erasekit.generation import SamplingSettings
    from erasekit.methods.base import get_method
    from erasekit.methods.harden import RECEConfig
    from erasekit.models.delta import WeightDelta
    from erasekit.models.loading import resolve_model_path

    info = get_method("uce")
    base = info.erase(shapes_pipe, get_concept("red"), info.config_cls.for_world("shapes"))
    base.save(tmp_path / "deltas" / "uce")
    detector, name = default_detector(get_concept("red"), True)
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))

    def attacked(*args, **kwargs):
        raise AssertionError("a screen ran an attack")

    monkeypatch.setattr(robustness, "run_attack", attacked)
    monkeypatch.setattr(robustness, "run_resurgence", attacked)
    args = (shapes_pipe, "red", [("uce", "rece")], tmp_path, settings, detector, name)
    kw = {"n_cases": 2, "per_tier": 4, "n_preserve": 8, "reuse": True, "screen": True}
    (row,) = robustness.run_rows(*args, **kw)
    assert row["screen"] is True and set(row["tiers"]) == {"explicit", "synonym", "implicit"} and 0 < row["adherence"] <= 1
    assert not {"plain", "unlearndiff", "ringabell", "resurgence"} & set(row)
    assert row["torch_threads"] == torch.get_num_threads()  # what a bitwise rebuild of its delta needs
    assert json.loads((tmp_path / "screens" / "uce+rece.json").read_text()) == row
    assert not (tmp_path / "uce+rece.json").exists()  # not a finished row of the folder
    cfg = RECEConfig.for_world("shapes", seed=0)
    saved = robustness.stored_hardening(tmp_path / "deltas" / "uce+rece", WeightDelta.load(tmp_path / "deltas" / "uce"),
                                        "rece", cfg)
    assert saved is not None and saved.delta_id == row["delta_id"]  # a full run with reuse starts from it
    monkeypatch.setattr(robustness, "measure_row", attacked)
    assert robustness.run_rows(*args, **kw) == [row]  # stored: read back, not measured again


def test_a_replaced_anchor_reaches_the_erasure_and_a_delta_of_another_anchor_is_not_reused(shapes_pipe, tmp_path):
    from erasekit.concepts.packs import get_concept
    from erasekit.eval import robustness
    from erasekit.eval.attacks.run import default_detector
    from erasekit.generation import SamplingSettings
    from erasekit.methods.base import get_method
    from erasekit.models.delta import WeightDelta
    from erasekit.models.loading import resolve_model_path

    info = get_method("uce")
    own = info.erase(shapes_pipe, get_concept("red"), info.config_cls.for_world("shapes"))  # anchor green
    own.save(tmp_path / "deltas" / "uce-anchor-blue")  # a delta of another anchor where the row would look
    detector, name = default_detector(get_concept("red"), True)
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    (row,) = robustness.run_rows(shapes_pipe, "red", [("uce", None)], tmp_path, settings, detector, name, n_cases=2,
                                 per_tier=4, n_preserve=8, reuse=True, screen=True, anchor="blue")
    assert row["method"] == "uce-anchor-blue" and row["anchor"] == "blue" and "erase_reused" not in row
    saved = WeightDelta.load(tmp_path / "deltas" / "uce-anchor-blue")
    assert robustness.saved_anchor(saved) == "blue" and robustness.saved_anchor(own) == "green"
    assert saved.delta_id == row["delta_id"] != own.delta_id
