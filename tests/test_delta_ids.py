"""Every method's delta is bit-identical to the stored one (tests/data/delta_ids.json).

The ids were recorded with ``tests/scripts/record_delta_ids.py``; a deliberate change of
what a method computes regenerates them with that script (one command, see its docstring).
"""

import importlib.util
import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("record_delta_ids", HERE / "scripts" / "record_delta_ids.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)
STORED = json.loads((HERE / "data" / "delta_ids.json").read_text())["cases"]


def test_stored_cases_cover_every_method_on_every_family():
    from erasekit.methods.base import list_methods

    for family in record.FAMILIES:
        assert {c["method"] for c in STORED if c["family"] == family} == set(list_methods()), family
    assert [record.key(c) for c in STORED] == [record.key(c) for f in record.FAMILIES for c in record.cases(f)]


@pytest.mark.parametrize("family", [pytest.param(f, marks=pytest.mark.slow) if f == "shapes" else f
                                    for f in record.FAMILIES])
def test_delta_ids_unchanged(family):
    want = {record.key(c): c["delta_id"] for c in STORED if c["family"] == family}
    got = {record.key(c): c["delta_id"] for c in record.compute(family)}
    assert got == want
