"""UCE and TRCE stage 1 on the Shapes model: the concept goes, the rest stays, the pipe is untouched."""

import json

import pytest
import torch
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.concepts.packs import get_concept
from erasekit.methods.base import get_method
from erasekit.models.delta import WeightDelta
from erasekit.models.scopes import get_scope
from shapes_helpers import rates_before_and_after


# Both closed forms on a shape and a color with their Shapes presets and the pack's counterpart
# anchors (circle -> square, red -> green).  Measured (32 prompts per tier, 96 preservation
# prompts): every case falls from 0.88-1.00 to <= 0.03 with the other values' adherence at
# >= 0.95 of the original's.  The bars: a fall of at least 5x, adherence >= 90%.
CASES = [("trce-t", "circle"), ("trce-t", "red"), ("uce", "circle"), ("uce", "red")]


@pytest.mark.parametrize("method,value", CASES)
@pytest.mark.slow
def test_closed_form_methods_erase_and_keep_the_rest(shapes_pipe, detector, method, value):
    min_fall, min_keep = 5.0, 0.9
    before = {k: v.clone() for k, v in shapes_pipe.unet.state_dict().items()}
    info = get_method(method)
    delta = info.erase(shapes_pipe, get_concept(value), info.config_cls.for_world("shapes"))
    after = shapes_pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "erase must leave the pipe unchanged"
    kv = set(get_scope("cross_attn_kv").select(shapes_pipe.unet, prefix="unet."))
    assert set(delta.names) == kv
    t0, k0, t1, k1 = rates_before_and_after(shapes_pipe, detector, delta, value, n_keep=24)
    assert t1 <= t0 / min_fall, (t0, t1)
    assert k1 >= min_keep * k0, (k0, k1)


def test_cli_erase_writes_delta_and_manifest(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["erase", "--model", "shapes", "--method", "trce-t", "--concept", "circle",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "trce-t" and manifest["base_model"] == "shapes"
    assert manifest["config"]["n_general"] == 400 and manifest["seed"] == 0
    assert {"torch", "diffusers", "transformers"} <= set(manifest["versions"])
    assert manifest["wall_time_s"] < 10
    delta = WeightDelta.load(out)
    assert len(delta.tensors) == 14
    assert manifest["config"]["concept"]["anchor"] == "square"


def test_cli_anchor_option_replaces_the_anchor(tmp_path):
    out = tmp_path / "neutral"
    res = CliRunner().invoke(app, ["erase", "--method", "uce", "--concept", "circle", "--anchor", "shape",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    neutral = WeightDelta.load(out)
    assert neutral.manifest.config["concept"]["anchor"] == "shape"
    res = CliRunner().invoke(app, ["erase", "--method", "uce", "--concept", "circle", "--out", str(tmp_path / "pair")])
    paired = WeightDelta.load(tmp_path / "pair")
    name = neutral.names[0]
    assert not torch.equal(neutral.tensors[name], paired.tensors[name])


def test_cli_unknown_concept_lists_close_matches():
    res = CliRunner().invoke(app, ["erase", "--method", "trce-t", "--concept", "circel", "--out", "x"])
    assert res.exit_code == 2 and "circle" in res.output


def test_preservation_cache_is_reused_and_keyed(shapes_pipe, tmp_path):
    from erasekit.methods.preservation import describe_cache, preservation_moment

    cache = tmp_path / "stats.safetensors"
    prompts = ["a red square", "a blue star on a dark background"]
    m1 = preservation_moment(shapes_pipe, prompts, "eot", cache=cache)
    stamp = cache.stat().st_mtime_ns
    m2 = preservation_moment(shapes_pipe, prompts, "eot", cache=cache)
    assert torch.equal(m1, m2) and cache.stat().st_mtime_ns == stamp
    assert describe_cache(cache)["count"] == "2"
    m3 = preservation_moment(shapes_pipe, prompts + ["a green heart"], "eot", cache=cache)
    assert not torch.equal(m1, m3)
