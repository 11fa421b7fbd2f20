"""benchmarks/relabel_rows.py: a row measured with an earlier preset is renamed with every file that names it,
records the overrides that reproduce it, and a setting that became the preset loses its overrides."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from erasekit.eval.robustness import erase_config, erase_settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
_spec = importlib.util.spec_from_file_location("relabel_rows", ROOT / "benchmarks" / "relabel_rows.py")
relabel_rows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relabel_rows)

FORMER = {"lr": 0.001, "retain_kv_weight": 0.0}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "circle" / "cases48"
    for label in ("trust", "trust+adv", "trust-kv"):
        _write(folder / f"{label}.json", {"method": label, "concept": "circle", "seed": 0, "adherence": 1.0, "unlearndiff": 0.5})
        _write(folder / "attack-seeds" / f"{label}-unlearndiff-seed1.json", {"row": label, "won": 3})
        _write(folder / "resurgence" / label / "resurgence.json", {"method": "trust"})
        _write(folder / "attacks" / f"{label}-ringabell" / "attack.json", {"method": "trust"})
    return folder


def test_a_row_and_its_hardened_rows_are_renamed_with_their_records(tmp_path):
    folder = _folder(tmp_path)
    done = relabel_rows.relabel_folder(folder, "trust", "trust-old", "trust", FORMER, drop=False)
    assert len(done) == 2
    assert not (folder / "trust.json").exists() and not (folder / "trust+adv.json").exists()
    row = json.loads((folder / "trust-old.json").read_text())
    assert row["method"] == "trust-old" and row["method_overrides"] == FORMER
    assert row["erase_settings"] == erase_settings(erase_config("trust", 0, FORMER), "object")
    assert row["erase_settings"]["lr"] == 0.001
    assert json.loads((folder / "trust-old+adv.json").read_text())["method"] == "trust-old+adv"
    record = json.loads((folder / "attack-seeds" / "trust-old-unlearndiff-seed1.json").read_text())
    assert record == {"row": "trust-old", "won": 3}
    assert (folder / "resurgence" / "trust-old+adv" / "resurgence.json").exists()
    assert (folder / "attacks" / "trust-old-ringabell" / "attack.json").exists()
    # another method whose name starts the same is left alone
    assert json.loads((folder / "trust-kv.json").read_text())["method"] == "trust-kv"
    assert (folder / "attack-seeds" / "trust-kv-unlearndiff-seed1.json").exists()
    assert (folder / "resurgence" / "trust-kv").is_dir()


def test_a_taken_name_renames_nothing(tmp_path):
    folder = _folder(tmp_path)
    _write(folder / "resurgence" / "trust-old" / "resurgence.json", {})
    with pytest.raises(SystemExit, match="exists"):
        relabel_rows.relabel_folder(folder, "trust", "trust-old", "trust", FORMER, drop=False)
    assert (folder / "trust.json").exists() and (folder / "trust+adv.json").exists()


def test_dropping_overrides_needs_the_presets_settings(tmp_path):
    folder = tmp_path / "circle"
    preset = erase_settings(erase_config("trust", 0), "object")
    _write(folder / "trust-new.json", {"method": "trust-new", "concept": "circle", "seed": 0, "adherence": 1.0, "unlearndiff": 0.5,
                                       "method_overrides": {"lr": 0.01}, "erase_settings": preset})
    _write(folder / "trust-other.json", {"method": "trust-other", "concept": "circle", "seed": 0, "adherence": 1.0, "unlearndiff": 0.5,
                                         "method_overrides": FORMER,
                                         "erase_settings": erase_settings(erase_config("trust", 0, FORMER), "object")})
    relabel_rows.relabel_folder(folder, "trust-new", "trust", "trust", {}, drop=True)
    row = json.loads((folder / "trust.json").read_text())
    assert "method_overrides" not in row and row["erase_settings"] == preset
    with pytest.raises(SystemExit, match="not the current preset"):
        relabel_rows.relabel_folder(folder, "trust-other", "trust-x", "trust", {}, drop=True)
    assert (folder / "trust-other.json").exists()
