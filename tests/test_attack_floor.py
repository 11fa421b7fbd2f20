"""The attack's floor: random prefixes of the attack's vocabulary, judged as the attack judges its checks."""

import json

import pytest

from eval_helpers import load_script

from erasekit.concepts.packs import get_concept
from erasekit.models.vocabulary import resolve_vocabulary, words_of


def _script():
    return load_script("benchmarks/attack_floor.py")


def _record(cases: list[tuple[str, int]], exclude: bool = False) -> dict:
    attack = {"vocabulary": "shapes-world", "n_tokens": 3, "exclude_concept_words": exclude}
    return {"concept": "circle", "settings": {"attack": attack}, "sampling": {"steps": 25, "guidance_scale": 3.0},
            "delta": None, "cases": [{"source_prompt": p, "seed": s, "guidance": 3.0, "success": False}
                                     for p, s in cases]}


def _original_folder(tmp_path, exclude: bool = False):
    """A row folder holding the original model's attack record of two circle cases."""
    folder = tmp_path / "circle"
    (folder / "attacks" / "original-unlearndiff").mkdir(parents=True)
    record = _record([("a red circle", 11), ("a photo of a green circle", 12)], exclude)
    (folder / "attacks" / "original-unlearndiff" / "attack.json").write_text(json.dumps(record))
    return folder


def test_prefixes_are_words_of_the_attack_vocabulary_drawn_per_case_try_and_repeat(shapes_pipe):
    script, tok = _script(), shapes_pipe.tokenizer
    record = _record([("a red circle", 1), ("a blue circle", 2)])
    drawn = script.prefixes(tok, record, tries=5, repeats=3, exclude=False)
    allowed = {tok.convert_ids_to_tokens(int(i))[:-4] for i in resolve_vocabulary(tok, "shapes-world")}
    assert len(drawn) == 3 and all(len(rep) == 2 and all(len(case) == 5 for case in rep) for rep in drawn)
    words = [w for rep in drawn for case in rep for p in case for w in p.split()]
    assert len(words) == 3 * 2 * 5 * 3 and set(words) <= allowed and len(set(words)) > 20
    assert drawn == script.prefixes(tok, record, tries=5, repeats=3, exclude=False)  # seeded
    excluded = script.prefixes(tok, record, tries=5, repeats=40, exclude=True)
    concept_words = words_of(get_concept("circle").targets)
    assert not {w for rep in excluded for case in rep for p in case for w in p.split()} & concept_words


def test_random_prefixes_win_every_case_against_the_model_that_draws_the_concept(shapes_pipe, tmp_path):
    """On the original model the case prompts draw circles: the plain prompt or a prefixed one wins each case."""
    script = _script()
    folder = _original_folder(tmp_path)
    got = script.measure(shapes_pipe, folder, "original", tries=2, repeats=2, exclude=False)
    assert (got["won"], got["trials"], got["images"]) == (4, 4, 8) and got["image_hits"] >= 6


def test_the_page_is_generated_from_the_stored_measurements():
    script = _script()
    assert script.PAGE.read_text() == script.page()


def test_named_as_replaces_the_concepts_words_and_fits_the_article():
    script = _script()
    words = words_of(get_concept("circle").targets)
    assert script.named_as("an image showing a green circle", words, "square") == "an image showing a green square"
    assert script.named_as("a Round orb, simple icon", words, "star") == "a star star, simple icon"
    red = words_of(get_concept("red").targets)
    assert script.named_as("there is a red circle", red, "orange") == "there is an orange circle"
    with pytest.raises(ValueError, match="names none of"):
        script.named_as("a blue square", words, "star")


def test_the_original_asked_for_the_anchor_is_rarely_read_as_the_concept(shapes_pipe, tmp_path):
    """``--as square``: the case prompts name a square, so the original model's images are not read as circles."""
    script = _script()
    folder = _original_folder(tmp_path, exclude=True)
    got = script.measure(shapes_pipe, folder, "original", tries=2, repeats=2, exclude=True, name_as="square")
    assert got["named_as"] == "square" and got["plain_won"] == 0 and got["image_hits"] <= 1
    with pytest.raises(ValueError, match="original model"):
        script.measure(shapes_pipe, folder, "trce", tries=1, repeats=1, exclude=True, name_as="square")


def test_images_read_as_the_concept_are_the_ones_the_detector_reads_so(shapes_pipe, tmp_path):
    """``--images``: each column is a prefixed image read as the concept, its likeliest value first."""
    script = _script()
    folder = _original_folder(tmp_path, exclude=True)
    grid, lines = script.read_as_concept(shapes_pipe, folder, "original", tries=2, exclude=True)
    assert 2 <= len(lines) <= 4 and all(": circle " in line for line in lines)
    assert grid.size == (len(lines) * 132, 260)
