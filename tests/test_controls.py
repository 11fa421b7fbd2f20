"""The robustness benchmark's controls (`erasekit.eval.controls`)."""

import pytest
import torch


def _encode(pipe, prompt: str) -> torch.Tensor:
    from erasekit.models.text import encode_prompts

    with torch.no_grad():
        return encode_prompts(pipe, [prompt])


def test_a_shapes_values_control_words_are_its_names_and_the_implicit_words_no_other_value_uses():
    from erasekit.concepts.packs import get_concept
    from erasekit.eval.controls import concept_words

    words = concept_words(get_concept("circle"))
    assert {"circle", "disc", "round", "orb", "moon", "coin"} <= set(words)  # round is also a dotted word: a name
    assert not {"shape", "like", "with", "a", "no", "corners"} & set(words)  # shared with other values' wording
    assert {"red", "crimson", "scarlet", "ruby", "strawberry"} <= set(concept_words(get_concept("red")))


def test_words_as_anchor_encodes_the_concepts_prompts_as_the_anchors_and_changes_nothing_else(shapes_pipe):
    from erasekit.concepts.packs import get_concept
    from erasekit.eval.controls import control_delta
    from erasekit.models.delta import apply_delta, revert_delta

    before = {p: _encode(shapes_pipe, p) for p in ("a red square", "a blue triangle", "a red circle")}
    delta = control_delta(shapes_pipe, "words-as-anchor", get_concept("circle"))
    assert delta.manifest.method == "control-words-as-square" and delta.components == {"text_encoder"}
    assert _encode(shapes_pipe, "a red circle").equal(before["a red circle"])  # building it leaves the pipe as it was
    apply_delta(shapes_pipe, delta)
    try:
        for said, read in (("a red circle", "a red square"), ("a red disc", "a red square"),
                           ("a blue triangle", "a blue triangle"), ("a red square", "a red square")):
            assert _encode(shapes_pipe, said).equal(before[read]), said
    finally:
        revert_delta(shapes_pipe, delta)
    assert _encode(shapes_pipe, "a red circle").equal(before["a red circle"])


def test_a_control_needs_a_one_token_substitute_and_a_known_name(shapes_pipe):
    from erasekit.concepts.packs import get_concept
    from erasekit.eval.controls import control_delta, words_as

    with pytest.raises(ValueError, match="not one token"):
        words_as(shapes_pipe, ["circle"], "quadrate", "control-x")
    with pytest.raises(ValueError, match="unknown control"):
        control_delta(shapes_pipe, "noise", get_concept("circle"))
    from erasekit.eval.robustness import measure_row

    with pytest.raises(ValueError, match="a method or a control"):
        measure_row(shapes_pipe, "uce", "circle", 2, 0, None, None, None, "circle", control="words-as-anchor")
    with pytest.raises(ValueError, match="one-word anchor"):
        control_delta(shapes_pipe, "words-as-anchor", get_concept("red-circle"))  # anchor "green square"


@pytest.mark.slow
def test_a_control_row_measures_the_controls_delta_under_its_own_label(shapes_pipe, tmp_path):
    from erasekit.concepts.packs import get_concept
    from erasekit.eval import robustness
    from erasekit.eval.attacks.run import default_detector
    from erasekit.generation import SamplingSettings
    from erasekit.models.delta import WeightDelta
    from erasekit.models.loading import resolve_model_path

    detector, name = default_detector(get_concept("circle"), True)
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    (row,) = robustness.run_rows(shapes_pipe, "circle", [], tmp_path, settings, detector, name, n_cases=2,
                                 per_tier=8, n_preserve=8, screen=True, controls=["words-as-anchor"])
    saved = WeightDelta.load(tmp_path / "deltas" / "control-words-as-square")
    assert row["method"] == "control-words-as-square" and row["control"] == "words-as-anchor"
    assert row["delta_id"] == saved.delta_id
    assert row["tiers"]["explicit"] <= 0.25  # asked for circles, the control draws squares
