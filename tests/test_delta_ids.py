"""Every method's delta is the stored one (tests/data/delta_ids.json): bit-identical on a CPU whose
arithmetic signature has a stored id, and with the stored summary (which tensors changed, by how much)
on any CPU.

The cases were recorded with ``tests/scripts/record_delta_ids.py``; a deliberate change of what a
method computes records them again with that script (one command, see its docstring), which also
adds a new machine's ids.
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
    from erasekit.models.arithmetic import signature

    here = signature()
    stored = {record.key(c): c for c in STORED if c["family"] == family}
    fresh = {record.key(c): c for c in record.compute(family)}
    assert fresh.keys() == stored.keys()
    assert [p for k, c in fresh.items() for p in record.problems(stored[k], c, here)] == []


def test_a_summary_tells_a_changed_edit_from_another_cpu():
    """The tolerance passes another summation order's noise and fails a change of what a method computes."""
    case = next(c for c in STORED if c["family"] == "sd1" and c["method"] == "esd-x")
    noisy = {n: [v[0] * (1 + 1e-3), v[1] + 1] for n, v in case["summary"].items()}
    scaled = {n: [v[0] * 1.1, v[1]] for n, v in case["summary"].items()}
    fewer = dict(list(case["summary"].items())[1:])
    assert record.summaries_agree(case["summary"], noisy)
    assert not record.summaries_agree(case["summary"], scaled) and not record.summaries_agree(case["summary"], fewer)
    here = next(iter(case["delta_ids"]))
    assert record.problems(case, {**case, "delta_id": "0" * 16, "summary": noisy}, here)  # known CPU: bytes
    assert not record.problems(case, {**case, "delta_id": "0" * 16, "summary": noisy}, "Another CPU / AVX2")
    merged = record.merged(case, {**case, "delta_id": "1" * 16, "summary": noisy}, "Another CPU / AVX2")
    assert merged["delta_ids"] == {**case["delta_ids"], "Another CPU / AVX2": "1" * 16}
    assert record.merged(case, {**case, "delta_id": "1" * 16, "summary": scaled}, "X / Y")["delta_ids"] == {"X / Y": "1" * 16}


def test_arithmetic_signatures_match_by_cpu_and_kernel_level():
    from erasekit.models.arithmetic import same_arithmetic

    assert same_arithmetic("AMD EPYC / AVX2", "AMD EPYC / AVX2")
    assert not same_arithmetic("AMD EPYC / AVX2", "AMD EPYC / AVX512")
    assert same_arithmetic("AMD EPYC / unknown", "AMD EPYC / AVX512")  # recorded before the level was
    assert same_arithmetic("AMD EPYC / AVX512", "AMD EPYC / unknown")
    assert not same_arithmetic("AMD EPYC / unknown", "Intel(R) Xeon(R) Processor / AVX512")
