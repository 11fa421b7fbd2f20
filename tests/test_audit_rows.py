"""benchmarks/audit_rows.py: a stored row reproduces when today's preset gives the delta id it measured (a
hardened row: its base's id, recorded in the row or read from the unhardened row beside it measured under
the same arithmetic); only verified rows get erase_settings written into them."""

import importlib.util
import json
from pathlib import Path

import pytest

from erasekit.concepts.packs import get_concept
from erasekit.eval.robustness import erase_config, erase_settings
from erasekit.methods.base import get_method
from erasekit.models.arithmetic import signature

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("audit_rows", ROOT / "benchmarks" / "audit_rows.py")
audit_rows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(audit_rows)


def _row(folder: Path, label: str, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    row = {"method": label, "concept": "circle", "seed": 0, "torch_threads": 1, "arithmetic": signature(),
           "unlearndiff": 0.5, **fields}
    (folder / f"{label}.json").write_text(json.dumps(row))


@pytest.mark.parametrize("base, overrides, method", [
    ("trce", None, "trce"), ("trce-t", None, "trce-t"), ("salun++", None, "salun++"),
    ("trce-eta100", {"eta": 100.0}, "trce"), ("trust-kv-x", {"regularizer": "cip"}, "trust-kv"),
    ("trust-kv-cip", {"regularizer": "cip"}, "trust"), ("trce-eta100", None, None), ("nosuch-x", {"lr": 1.0}, None)])
def test_a_row_label_names_its_registered_method(base, overrides, method):
    """By its experiment config where one names it (``trust-kv-cip`` is TRuST with a tag), else by the
    longest registered name the label extends."""
    assert audit_rows.registered_method(base, overrides, audit_rows.config_methods()) == method


@pytest.mark.usefixtures("one_thread")  # the rows record one thread: erase at one under any OMP_NUM_THREADS
def test_rows_are_judged_by_the_delta_bytes_and_only_verified_rows_are_filled(tmp_path, monkeypatch, shapes_pipe):
    ids = {}
    for method in ("uce", "trce-t"):
        delta = get_method(method).erase(shapes_pipe, get_concept("circle"), erase_config(method, 0))
        ids[method] = delta.delta_id
    folder = tmp_path / "robustness" / "circle"
    _row(folder, "uce", delta_id=ids["uce"])
    _row(folder, "uce+rece", delta_id="hardened-uce")          # base id: the unhardened row beside it
    _row(folder, "trce-t", delta_id="0" * 16)                   # measured with something else
    _row(folder, "trce-t+adv", delta_id="hardened-trce-t", base_delta_id=ids["trce-t"])  # base id: the row's own
    _row(folder, "esd-x", delta_id="1" * 16, arithmetic="Another CPU / AVX2")  # not comparable here: not run
    _row(folder, "esd-x+adv", delta_id="hardened-esd-x")        # the row beside it is another CPU's: no base id
    monkeypatch.setattr(audit_rows, "ROOTS", [tmp_path / "robustness"])
    monkeypatch.setattr(audit_rows, "RECORDS", tmp_path / "records")
    monkeypatch.setattr("erasekit.models.loading.load_pipeline", lambda name: shapes_pipe)

    audit_rows.run(0, 1)
    records = audit_rows.load_records()
    assert len(records) == 2  # one erasure per (method, concept, seed, overrides, threads, arithmetic), shared by its rows
    assert all(r["arithmetic"] == signature() for rs in records.values() for r in rs)
    verdicts = {e["label"]: audit_rows.verdict(e, records)[0] for e in audit_rows.audit_rows()}
    assert verdicts == {"uce": "reproduces", "uce+rece": "reproduces", "trce-t": "does not reproduce",
                        "trce-t+adv": "reproduces", "esd-x": "not run yet", "esd-x+adv": "erasure id not recorded"}

    page = audit_rows.report(fill=True)
    assert "| trce-t | 2 | 1 | 1 | 0 | 0 |" in page and f"| {folder} | trce-t | trce-t  | 0 | {'0' * 16} (row) |" in page
    assert "| esd-x | 2 | 0 | 0 | 1 | 1 |" in page and "Another CPU / AVX2: 1" in page
    kind = get_concept("circle").kind
    for label in ("uce", "uce+rece", "trce-t+adv"):
        row = json.loads((folder / f"{label}.json").read_text())
        assert row["erase_settings"] == erase_settings(erase_config(row["method"].split("+")[0], 0), kind)
    assert "erase_settings" not in json.loads((folder / "trce-t.json").read_text())


def test_the_page_is_generated_from_the_records():
    assert audit_rows.PAGE.read_text() == audit_rows.report(fill=False)


def test_a_bad_shard_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["audit_rows.py", "--shard", "2/2"])
    with pytest.raises(SystemExit) as exc:
        audit_rows.main()
    assert exc.value.code == 2 and "--shard takes I/N" in capsys.readouterr().err
