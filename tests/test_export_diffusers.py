"""`erasekit export --format diffusers`: the merged pipeline folder keeps the model card files, so an
exported Shapes model is still the Shapes world (and erases with its preset); --overwrite; atomic writes."""

import json

import pytest
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.export import ExportError
from erasekit.export.diffusers_folder import export_merged
from erasekit.models.delta import WeightDelta, bitwise_equal, resolve_tensors
from erasekit.world.assets_paths import SHAPES_MODEL_DIR

runner = CliRunner()


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """A UCE delta erasing 'circle' from the Shapes model, written by the CLI."""
    run = tmp_path_factory.mktemp("runs") / "uce-circle"
    res = runner.invoke(app, ["erase", "--model", "shapes", "--method", "uce", "--concept", "circle", "--out", str(run)])
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture(scope="module")
def exported(shapes_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "shapes-no-circle"
    res = runner.invoke(app, ["export", "--delta", str(shapes_run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_export_keeps_the_model_card_and_merges_the_delta(shapes_run, exported):
    from erasekit.models.loading import is_shapes_world, load_pipeline

    assert (exported / "erasekit.json").read_bytes() == (SHAPES_MODEL_DIR / "erasekit.json").read_bytes()
    pipe = load_pipeline(str(exported))
    assert is_shapes_world(pipe)
    delta = WeightDelta.load(shapes_run)
    assert delta.mismatches(pipe, "new") == []  # every changed tensor holds the erased values, bit for bit
    assert json.loads((exported / "erasekit_delta.json").read_text())["delta_id"] == delta.delta_id
    card = (exported / "README.md").read_text()
    assert "uce" in card and "circle" in card and delta.delta_id in card


def test_erasing_an_exported_shapes_model_uses_the_shapes_preset(shapes_run, exported, tmp_path):
    from erasekit.methods.base import get_method

    again = tmp_path / "again"
    res = runner.invoke(app, ["erase", "--model", str(exported), "--method", "uce", "--concept", "square",
                              "--out", str(again)])
    assert res.exit_code == 0, res.output
    assert "preset shapes" in res.output
    cfg = WeightDelta.load(again).manifest.config
    shapes = get_method("uce").config_cls.preset("shapes").model_dump(mode="json")
    assert {k: cfg[k] for k in shapes if k in cfg and k != "concept"} == \
        {k: v for k, v in shapes.items() if k in cfg and k != "concept"}
    sd = get_method("uce").config_cls.preset("sd").model_dump(mode="json")
    assert any(cfg.get(k) != v for k, v in sd.items() if k in cfg and k != "concept")  # not the SD preset


def test_existing_output_needs_overwrite(shapes_run, exported):
    before = {p.name: p.stat().st_mtime_ns for p in exported.iterdir()}
    res = runner.invoke(app, ["export", "--delta", str(shapes_run), "--out", str(exported)])
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert {p.name: p.stat().st_mtime_ns for p in exported.iterdir()} == before
    res = runner.invoke(app, ["export", "--delta", str(shapes_run), "--out", str(exported), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (exported / "erasekit.json").is_file()
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]


def test_export_merged_leaves_the_live_pipeline_untouched(shapes_pipe, shapes_run, tmp_path):
    delta = WeightDelta.load(shapes_run)
    before = {n: t.clone() for n, t in resolve_tensors(shapes_pipe, delta.names).items()}
    out = export_merged(shapes_pipe, delta, tmp_path / "merged")
    assert all(bitwise_equal(t, before[n]) for n, t in resolve_tensors(shapes_pipe, delta.names).items())
    assert (out / "model_index.json").is_file() and (out / "erasekit.json").is_file()
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(out / "unet").state_dict()
    assert all(bitwise_equal(unet[n[5:]], delta.tensors[n]) for n in delta.names if n.startswith("unet."))
    with pytest.raises(ExportError, match="exists"):
        export_merged(shapes_pipe, delta, out)
    export_merged(shapes_pipe, delta, out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_refuses_a_model_that_is_not_the_delta_base(shapes_run, tmp_path):
    from erasekit.models.tiny import tiny_pipeline

    tiny = tiny_pipeline("sd1")
    tiny.save_pretrained(str(tmp_path / "tiny"))
    res = runner.invoke(app, ["export", "--delta", str(shapes_run), "--model", str(tmp_path / "tiny"),
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not the base" in res.output
    assert not (tmp_path / "x").exists()



def test_a_delta_on_top_of_another_is_exported_from_the_merged_parent(shapes_run, exported, tmp_path):
    child = tmp_path / "child"
    res = runner.invoke(app, ["erase", "--method", "uce", "--concept", "square", "--from", str(shapes_run),
                              "--out", str(child)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", "--delta", str(child), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "computed on top of delta" in res.output and not (tmp_path / "x").exists()
    res = runner.invoke(app, ["export", "--delta", str(child), "--model", str(exported), "--format", "lora",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output  # the exported parent is the child's base
