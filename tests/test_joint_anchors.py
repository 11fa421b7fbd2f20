"""Anchors of concepts erased together: moved off each other's targets, or a clear error."""

import pytest
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.concepts.joint import AnchorCollisionError, erased_concepts, separate_anchors
from erasekit.concepts.packs import get_concept
from erasekit.concepts.spec import ConceptSpec
from erasekit.eval.tasks import get_task as get_scenario
from erasekit.models.delta import WeightDelta


def _spec(name, targets, anchor, alternatives=(), **extra):
    return ConceptSpec(name=name, kind="object", targets=targets, anchor=anchor,
                       anchor_alternatives=list(alternatives), **extra)


def test_names_target_matches_whole_words_only():
    red = get_concept("red")
    assert red.names_target("a Crimson square") and red.names_target("red")
    assert not red.names_target("a bored cat") and not red.names_target("reddish") and not red.names_target("")


def test_counterpart_anchors_that_are_erased_together_move_to_free_alternatives():
    red, green, blue = (get_concept(c) for c in ("red", "green", "blue"))
    assert (red.anchor, green.anchor, blue.anchor) == ("green", "red", "orange")
    moved = separate_anchors([red, green, blue])
    # the farthest colour on the wheel that is not erased: red -> yellow (green is), green -> orange (red is)
    assert [m.anchor for m in moved] == ["yellow", "orange", "orange"]
    assert moved[2] is blue  # no collision: the same spec back
    assert all(not other.names_target(m.anchor) for m in moved for other in moved)
    # alone, nothing moves
    assert separate_anchors([red])[0] is red


def test_already_erased_concepts_are_avoided_but_not_returned():
    (green,) = separate_anchors([get_concept("green")], already_erased=[get_concept("red")])
    assert green.anchor == "orange"


def test_target_anchors_move_too_and_a_concept_without_a_free_alternative_is_an_error():
    church = _spec("church", ["church"], "building", ["house"], target_anchors={"church": "chapel"})
    chapel = _spec("chapel", ["chapel"], "building")
    moved, _ = separate_anchors([church, chapel])
    assert moved.anchor == "building" and moved.target_anchors == {"church": "house"}
    dog, cat = _spec("dog", ["dog"], "a cat"), _spec("cat", ["cat"], "a dog", ["a dog or a fox"])
    with pytest.raises(AnchorCollisionError, match="dog's anchor 'a cat' names cat"):
        separate_anchors([dog, cat])


def test_erased_concepts_are_read_from_single_and_sequential_manifests():
    red, green = get_concept("red"), get_concept("green")
    config = {"sequential": [{"eta": 1, "concept": red.to_dict()}, {"concept": green.to_dict()}]}
    assert [c.name for c in erased_concepts(config)] == ["shapes/red", "shapes/green"]
    assert erased_concepts({"lr": 1.0}) == []


def test_multi_scenario_specs_have_separate_anchors_and_single_ones_keep_the_pack():
    multi = get_scenario("multi").specs()
    assert [s.anchor for s in multi] == ["yellow", "orange", "orange"]
    assert get_scenario("attribute").specs()[0] == get_concept("red")
    # the alternatives are not part of what one erasure depends on (bench fingerprints stay)
    assert "anchor_alternatives" not in multi[0].effective_dict()
    # and the report says which anchors moved, from the same specs
    from erasekit.eval.bench.modes import BenchPlan
    from erasekit.eval.bench.markdown import _anchor_moves
    from erasekit.eval.bench.cells import BenchRun

    run = BenchRun(BenchPlan("full", ["object", "multi"], ["uce"], per_tier=1, n_preserve=1, n_adversarial=0))
    assert _anchor_moves(run) == ": red's anchor green -> yellow, green's anchor red -> orange"


@pytest.mark.slow
def test_cli_erase_from_a_delta_moves_the_anchor_off_what_it_erased(tmp_path):
    run = CliRunner()
    res = run.invoke(app, ["erase", "--method", "uce", "--concept", "red", "--out", str(tmp_path / "red")])
    assert res.exit_code == 0, res.output
    res = run.invoke(app, ["erase", "--method", "uce", "--concept", "green", "--from", str(tmp_path / "red"),
                           "--out", str(tmp_path / "green")])
    assert res.exit_code == 0, res.output
    assert "using 'orange'" in res.output
    assert WeightDelta.load(tmp_path / "green").manifest.config["concept"]["anchor"] == "orange"
    # an explicit --anchor is the user's choice and is kept
    res = run.invoke(app, ["erase", "--method", "uce", "--concept", "green", "--from", str(tmp_path / "red"),
                           "--anchor", "red", "--out", str(tmp_path / "forced")])
    assert res.exit_code == 0 and WeightDelta.load(tmp_path / "forced").manifest.config["concept"]["anchor"] == "red"
