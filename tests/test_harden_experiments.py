"""Hardening experiment configs: each one is valid for benchmarks/robustness.py, a bad one is a
one-line error (exit 2), and docs/experiments/harden.md is what the configs' rows generate."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from erasekit.eval.robustness import chain_overrides, stored_hardening
from erasekit.methods.harden import variant_chain, variant_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "benchmarks" / "experiments" / "harden").glob("*.json"))


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


robustness = _load("robustness", ROOT / "benchmarks" / "robustness.py")
harden_table = _load("harden_table", ROOT / "benchmarks" / "experiments" / "harden_table.py")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_parses_to_robustness_options(path):
    ap = robustness.build_parser()
    options = robustness.experiment_args(path, ap)
    ap.set_defaults(**options)
    a = ap.parse_args([])
    assert (a.methods or a.controls) and a.out == Path(json.loads(path.read_text())["args"]["out"])
    assert a.harden or a.controls or not a.hardened_only  # a config without hardening measures unhardened rows
    assert not a.controls or (a.hardened_only and not a.methods)  # a control config measures its controls alone
    for chain in a.harden or []:  # every override is a field of its step's variant
        steps = variant_chain(chain)
        for variant, overrides in zip(steps, chain_overrides(steps, a.harden_config)):
            assert variant_config(variant).for_world("shapes", **overrides)


@pytest.mark.parametrize("doc", [{"args": {"no_such_option": 1}}, {"args": {}, "extra": 1}, ["not", "a", "dict"]])
def test_a_bad_config_is_a_one_line_error(tmp_path, capsys, doc):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as err:
        robustness.experiment_args(path, robustness.build_parser())
    assert err.value.code == 2 and "bad.json" in capsys.readouterr().err


def test_the_page_is_generated_from_the_rows():
    assert harden_table.PAGE.read_text() == harden_table.table(CONFIGS)


def test_a_config_lists_only_the_rows_it_asks_for():
    asked = harden_table._asked({"methods": ["kscu", "salun++"], "harden": ["adv", "rece"], "no_original": True})
    assert asked == {"kscu", "salun++", "kscu+adv", "salun+++adv", "kscu+rece", "salun+++rece"}
    tagged = harden_table._asked({"methods": ["trce"], "harden": ["adv"], "harden_tag": "-rw4", "hardened_only": True})
    assert tagged == {"trce+adv-rw4"}
    assert "original" in harden_table._asked({"methods": ["uce"], "harden": ["rece"]})


def test_a_saved_hardening_is_reused_only_for_its_base_and_settings(tmp_path):
    import torch

    from erasekit.methods.harden import AdvConfig
    from erasekit.models.delta import WeightDelta

    w = {"unet.conv_in.weight": torch.zeros(2, 2)}
    base = WeightDelta.from_state_dicts(w, {k: v + 1 for k, v in w.items()}, method="uce")
    other = WeightDelta.from_state_dicts(w, {k: v + 2 for k, v in w.items()}, method="uce")
    cfg = AdvConfig.for_world("shapes", seed=0, retain_weight=4.0)
    saved = WeightDelta.from_state_dicts(
        w, {k: v + 3 for k, v in w.items()}, method="uce+adv", seed=0, wall_time_s=12.0,
        config={"harden": {"variant": "adv", **cfg.model_dump()}, "chain": [{"method": "uce", "delta_id": base.delta_id},
                                                                         {"method": "harden:adv"}]})
    saved.save(tmp_path / "h")
    found = stored_hardening(tmp_path / "h", base, "adv", cfg)
    assert found is not None and found.delta_id == saved.delta_id
    assert stored_hardening(tmp_path / "h", other, "adv", cfg) is None  # another base erasure
    assert stored_hardening(tmp_path / "h", base, "adv", AdvConfig.for_world("shapes", seed=0)) is None
    assert stored_hardening(tmp_path / "missing", base, "adv", cfg) is None
    # an inner chain step also finds it saved under another name (a tagged row's delta); the last step does not
    from erasekit.eval.robustness import _stored_step

    assert _stored_step(tmp_path / "uce+adv", False, base, "adv", cfg).delta_id == saved.delta_id
    assert _stored_step(tmp_path / "uce+adv", True, base, "adv", cfg) is None


attack_wins = _load("attack_wins", ROOT / "benchmarks" / "attack_wins.py")


def test_the_attack_wins_page_is_generated_from_the_records():
    assert attack_wins.PAGE.read_text() == attack_wins.page()


def test_attack_wins_count_clear_and_ambiguous_wins_and_name_rows_without_records(tmp_path):
    folder = tmp_path / "circle"
    record = folder / "attacks" / "uce+adv-unlearndiff"
    record.mkdir(parents=True)
    cases = [{"prompt": f"p{k}", "success": k < 3, "score": s} for k, s in enumerate([0.9, 0.4, 0.6, 0.1])]
    (record / "attack.json").write_text(json.dumps({"cases": cases}))
    (folder / "uce+adv.json").write_text(json.dumps({"method": "uce+adv", "unlearndiff": 0.75, "ringabell": 0.25}))
    text = attack_wins.page(tmp_path)
    assert "| circle | uce+adv | UnlearnDiffAtk | 3 / 4 | 2 | 0.60 | 0.40 |" in text
    assert "- circle, uce+adv, UnlearnDiffAtk: `p1` (p = 0.40)" in text            # a hardened row with <= 3 wins
    assert "circle/uce+adv (Ring-A-Bell)" in text.splitlines()[-1]                 # a win rate without its record
