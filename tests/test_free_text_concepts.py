"""Free-text concepts: `erase --target "..." [--synonym] [--anchor] [--preserve] [--kind]` builds a ConceptSpec;
`concepts show NAME` prints YAML that `--concept file.yaml` takes back; several concepts erase in sequence."""

import json

import pytest
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.cli.free_text import free_text_concept, with_general_preserve
from erasekit.concepts.packs import get_concept
from erasekit.concepts.spec import ConceptSpec
from erasekit.models.delta import WeightDelta

runner = CliRunner()


@pytest.mark.parametrize("name", ["shapes/circle", "shapes/red-circle", "shapes/circle-on-dark", "sd/van-gogh",
                                  "sd/nudity"])
def test_concepts_show_round_trips_through_a_yaml_file(name, tmp_path):
    res = runner.invoke(app, ["concepts", "show", name])
    assert res.exit_code == 0, res.output
    path = tmp_path / "concept.yaml"
    path.write_text(res.stdout)
    assert ConceptSpec.from_file(path) == get_concept(name)


def test_a_shown_concept_file_erases_exactly_like_its_name(tmp_path):
    path = tmp_path / "circle.yaml"
    path.write_text(runner.invoke(app, ["concepts", "show", "shapes/circle"]).stdout)
    for concept, out in ((str(path), tmp_path / "from-file"), ("circle", tmp_path / "from-name")):
        res = runner.invoke(app, ["erase", "--method", "uce", "--concept", concept, "--out", str(out)])
        assert res.exit_code == 0, res.output
    assert WeightDelta.load(tmp_path / "from-file").delta_id == WeightDelta.load(tmp_path / "from-name").delta_id


def test_free_text_spec_in_each_world(shapes_pipe):
    spec = free_text_concept("a red star", anchor="a blue star", world="shapes")
    assert spec.name == "custom/a-red-star" and spec.kind == "object" and spec.targets == ["a red star"]
    assert spec.target_prompts()[:2] == ["a red star", "a picture of a red star"]
    assert spec.anchor_prompts()[1] == "a picture of a blue star"
    hat = free_text_concept("apple", synonyms=["pomme"], anchor="fruit", preserve=["a pear"], world="sd")
    assert hat.targets == ["apple", "pomme"] and hat.target_prompts()[0] == "a photo of an apple"
    assert free_text_concept("Monet", kind="style").target_prompts()[0] == "a painting in the style of Monet"
    kept = with_general_preserve(spec, shapes_pipe, n=20)
    assert len(kept.preserve) == 20
    assert not any(spec.names_target(p) for p in kept.preserve)
    assert with_general_preserve(hat, shapes_pipe, n=5).preserve[0] == "a pear"


@pytest.mark.parametrize("args, message", [
    (["--concept", "cowboy hat"], "--target 'cowboy hat'"),
    (["--concept", "missing.yaml"], "does not exist"),
    (["--synonym", "stetson", "--concept", "circle"], "describe a --target concept"),
    (["--target", "a", "--target", "b", "--synonym", "c"], "exactly one --target"),
    (["--target", "cowboy hat", "--kind", "hat"], "kind"),
    ([], "--concept NAME"),
])
def test_concept_argument_mistakes_are_one_line_errors(args, message, tmp_path):
    res = runner.invoke(app, ["erase", "--method", "uce", "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()


def test_several_concepts_erase_one_after_the_other(tmp_path):
    from erasekit.concepts.joint import erased_concepts

    out = tmp_path / "two"
    res = runner.invoke(app, ["erase", "--method", "uce", "--concept", "circle", "--target", "a red star",
                              "--anchor", "a blue star", "--out", str(out)])
    assert res.exit_code == 0, res.output
    config = WeightDelta.load(out).manifest.config
    names = [c.name for c in erased_concepts(config)]
    assert names == ["shapes/circle", "custom/a-red-star"]
    assert json.loads((out / "manifest.json").read_text())["wall_time_s"] is not None


@pytest.mark.slow
def test_erasing_a_red_star_from_free_text_lowers_its_rate_and_keeps_other_stars(shapes_pipe, detector, all_threads):
    import numpy as np

    from erasekit.cli.free_text import free_text_concept, with_general_preserve
    from erasekit.generation import SamplingSettings, generate
    from erasekit.methods.base import get_method
    from erasekit.models.delta import apply_delta, revert_delta
    from erasekit.world.assets_paths import SHAPES_MODEL_DIR
    from erasekit.world.vocabulary import load_vocabulary

    templates = load_vocabulary().templates
    rows = [(templates[i % len(templates)].replace("{np}", "a red star"), "red", i) for i in range(12)]
    rows += [(templates[i % len(templates)].replace("{np}", f"a {c} star"), c, i)
             for c in ("orange", "yellow", "green", "blue", "purple") for i in range(2)]
    settings = SamplingSettings.for_model(SHAPES_MODEL_DIR)

    def rates():
        pred = detector.predict(generate(shapes_pipe, [r[0] for r in rows], [r[2] for r in rows], settings))
        hit = np.array([c == r[1] and s == "star" for c, s, r in zip(pred["color"], pred["shape"], rows)])
        return hit[:12].mean(), hit[12:].mean()

    spec = with_general_preserve(free_text_concept("a red star", anchor="a blue star", world="shapes"), shapes_pipe)
    info = get_method("uce")
    delta = info.erase(shapes_pipe, spec, info.config_cls.preset("shapes"))
    red0, others0 = rates()
    apply_delta(shapes_pipe, delta)
    try:
        red1, others1 = rates()
    finally:
        revert_delta(shapes_pipe, delta)
    assert red0 >= 0.75 and red1 <= 0.25
    assert others1 >= others0 - 0.2
