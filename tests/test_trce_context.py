"""TRCE stage 1's context copies (``context_prefixes``): the edit also covers the concept after other words."""

import pytest
import torch

from erasekit.concepts.packs import get_concept
from erasekit.methods.closed_form import cross_attention_kv_names
from erasekit.methods.preservation import paired_eot_rows
from erasekit.methods.trce.textual import TRCETextualConfig, erase_textual, with_context
from erasekit.models.delta import apply_delta, revert_delta


def test_context_copies_put_the_same_words_in_front_of_each_source_and_its_anchor():
    sources, anchors = ["a circle", "a photo of a circle"], ["a square", "a photo of a square"]
    words = ["blue", "dotted", "dark", "star", "on"]
    src, anc = with_context(sources, anchors, words, copies=3, n_words=2, seed=0)
    assert src[:2] == sources and anc[:2] == anchors and len(src) == len(anc) == 2 + 2 * 3
    for s, a, base_s, base_a in zip(src[2:], anc[2:], [sources[0]] * 3 + [sources[1]] * 3, [anchors[0]] * 3 + [anchors[1]] * 3):
        front = s[: -len(base_s) - 1]
        assert s == f"{front} {base_s}" and a == f"{front} {base_a}"
        assert len(front.split()) == 2 and set(front.split()) <= set(words)
    assert (src, anc) == with_context(sources, anchors, words, copies=3, n_words=2, seed=0)  # seeded
    assert src != with_context(sources, anchors, words, copies=3, n_words=2, seed=1)[0]


def test_default_config_keeps_the_fingerprint_of_results_stored_before_the_option():
    fingerprint = TRCETextualConfig.preset("shapes").fingerprint()
    assert "context_prefixes" not in fingerprint and "context_words" not in fingerprint
    assert TRCETextualConfig.preset("shapes", context_prefixes=4).fingerprint()["context_prefixes"] == 4


def test_context_prefixes_without_general_prompts_is_a_one_line_error(shapes_pipe):
    with pytest.raises(ValueError, match="n_general"):
        erase_textual(shapes_pipe, get_concept("circle"), TRCETextualConfig.preset("shapes", context_prefixes=2,
                                                                                   n_general=0))


def test_context_prefixes_carry_the_edit_to_the_concept_after_other_words(shapes_pipe):
    """On held-out prefixed prompts the edited keys and values of the concept's [EoT] rows come closer
    to the original model's for the anchor than the plain edit brings them."""
    spec = get_concept("circle")
    fronts = ["green striped on", "dark heart yellow", "outlined purple star", "dotted on gray"]
    sources = [f"{f} {p}" for f in fronts for p in ("a blue circle", "there is a red circle")]
    anchors = [s.replace("circle", "square") for s in sources]
    src, anc = paired_eot_rows(shapes_pipe, sources, anchors, padding=True)
    names = cross_attention_kv_names(shapes_pipe.unet)
    params = {f"unet.{n}": p for n, p in shapes_pipe.unet.named_parameters()}
    goal = {n: anc @ params[n].detach().T for n in names}

    def gap(config) -> float:
        delta = erase_textual(shapes_pipe, spec, config)
        apply_delta(shapes_pipe, delta)
        try:
            return sum(float((src @ params[n].detach().T - goal[n]).pow(2).sum()) for n in names)
        finally:
            revert_delta(shapes_pipe, delta)

    before = sum(float((src @ params[n].detach().T - goal[n]).pow(2).sum()) for n in names)
    plain = gap(TRCETextualConfig.preset("shapes"))
    context = gap(TRCETextualConfig.preset("shapes", context_prefixes=4))
    assert context < 0.95 * plain < before
    assert not torch.equal(src, anc)
