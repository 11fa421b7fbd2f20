"""Unnamed prompts: the other attribute named alone, and the attack prompts with the concept's words deleted."""


import pytest
from eval_helpers import load_script

from erasekit.eval.probes import PRESERVE_SEED, TARGET_SEED, unnamed_probes
from erasekit.eval.tasks import get_task, value_task
from erasekit.world.vocabulary import VALUES, load_vocabulary



def _script():
    return load_script("benchmarks/unnamed_rate.py")


@pytest.mark.parametrize("value, partner", [("red", "shape"), ("circle", "color")])
def test_unnamed_probes_name_only_the_other_attribute(value, partner):
    probes = unnamed_probes(value_task(value), 24)
    vocab = load_vocabulary()
    attribute = "color" if partner == "shape" else "shape"
    words = {w for v in VALUES[attribute] for tier in ("explicit", "synonym") for w in vocab.words(attribute, v, tier)}
    assert [p.expected for p in probes] == [{partner: VALUES[partner][k % 6]} for k in range(24)]
    assert all(VALUES[partner][k % 6] in p.prompt for k, p in enumerate(probes))
    assert not any(w in p.prompt.split() for p in probes for w in words)  # the target's attribute is never named
    seeds = [p.seed for p in probes]
    assert len(set(seeds)) == 24 and not set(seeds) & set(range(TARGET_SEED, TARGET_SEED + 1000)) \
        and not set(seeds) & set(range(PRESERVE_SEED, PRESERVE_SEED + 1000))


def test_unnamed_probes_need_a_partner_attribute():
    with pytest.raises(ValueError, match="no partner"):
        unnamed_probes(get_task("combination"), 4)


def test_the_concepts_words_are_deleted_as_whole_words_only():
    without = _script().without_words
    words = ["red", "crimson", "scarlet", "ruby"]
    assert without("circle pumpkin completely a red circle", words) == "circle pumpkin completely a circle"
    assert without("Crimson sea there is a red square, simple icon", words) == "sea there is a square, simple icon"
    assert without("a redwood and a ruby-red star", words) == "a redwood and a ruby-red star"


@pytest.mark.slow
def test_the_shapes_model_draws_red_unasked_where_no_colour_is_named(shapes_pipe):
    from erasekit.eval.measure import unnamed_rate

    got = unnamed_rate(shapes_pipe, "red", 24)
    assert got["hits"] == got["read"]["red"] > 0 and sum(got["read"].values()) == 24
    assert got["interval"][0] <= got["rate"] == got["hits"] / 24 <= got["interval"][1]
    assert len(got["read"]) >= 4  # the colour is left to the model: several are drawn
