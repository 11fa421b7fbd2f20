"""benchmarks/kv_drift.py: the relative key/value drift of a delta, on a tiny pipeline."""

import pytest
import torch
from eval_helpers import load_script

from erasekit.models.delta import WeightDelta

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def script():
    return load_script("benchmarks/kv_drift.py")


def test_only_cross_attention_keys_and_values_are_measured(pipe, script):
    names = script.kv_weights(pipe)
    assert names and all(".attn2." in n and n.endswith(("to_k.weight", "to_v.weight")) for n in names)
    width = pipe.text_encoder.config.hidden_size
    assert all(w.shape[1] == width for w in names.values())


def test_scaling_every_key_and_value_by_one_plus_a_drifts_by_a_squared(pipe, script):
    base = script.kv_weights(pipe)
    rows = script.encode(pipe, ["a photo of a cat", "a red square"])
    edited = {n: 1.3 * w for n, w in base.items()}
    delta = WeightDelta.from_state_dicts(base, edited, method="test")
    assert script.relative_drift(base, delta, rows) == pytest.approx(0.09, rel=1e-4)


def test_a_key_value_edit_in_one_direction_moves_only_rows_along_it(pipe, script):
    base = script.kv_weights(pipe)
    rows = script.encode(pipe, ["a photo of a cat", "a red square"])
    u = torch.linalg.svd(rows, full_matrices=False).Vh[0]  # the rows' main direction
    off = torch.linalg.svd(rows, full_matrices=True).Vh[-1]  # a direction the rows barely reach
    along = WeightDelta.from_state_dicts(base, {n: w - w @ torch.outer(u, u) for n, w in base.items()}, method="test")
    away = WeightDelta.from_state_dicts(base, {n: w - w @ torch.outer(off, off) for n, w in base.items()}, method="test")
    assert script.relative_drift(base, along, rows) > 100 * script.relative_drift(base, away, rows)
    assert script.relative_drift(base, WeightDelta.from_state_dicts(base, dict(base), method="test"), rows) == 0.0


def test_the_page_is_what_the_stored_rows_give(script):
    assert script.PAGE.read_text() == script.page()
