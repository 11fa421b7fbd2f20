"""Controls of the robustness benchmark: deltas that no method computes, to calibrate the attacks.

`words_as` is the word-level erasure: the text encoder's input token embedding of each of the
concept's words is replaced by the embedding of one other word, so every prompt reads as if it named
that word in their place ("a red circle" is encoded exactly as "a red square"). Nothing else changes.
Against it an attack can bring the concept back only through words outside the concept's own
vocabulary: what an attack wins against this control is what that attack and its judge give to an
erasure that draws the substitute whenever the concept is named.

`concept_words` picks the words: for a Shapes value, the words of its explicit and synonym tiers and
the words of its implicit tier that no other value's wording uses (for circle: circle, disc, round,
orb, and full, moon, coin); for any other concept, its one-word target phrases. Words of more than
one token are left out (the delta's config lists them). The substitute is the concept's anchor, which
must be one word.
"""

from __future__ import annotations

from ..concepts.spec import ConceptSpec
from ..models.delta import WeightDelta, snapshot
from ..world.vocabulary import load_vocabulary
from .attacks.run import shapes_value

CONTROLS = ("words-as-anchor",)
_EMBEDDINGS = "embeddings.token_embedding.weight"  # under the text encoder module


def _single_token(tokenizer, word: str) -> int | None:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def concept_words(concept: ConceptSpec) -> list[str]:
    """The words whose embeddings `words_as` replaces (see the module docstring), sorted."""
    value = shapes_value(concept)
    if value is None:
        return sorted({t for t in concept.targets if len(t.split()) == 1})
    vocab = load_vocabulary()
    attribute = vocab.attribute_of(value)

    def words(v: str, a: str, tiers: tuple[str, ...]) -> set[str]:
        return {w for tier in tiers for phrase in vocab.words(a, v, tier) for w in phrase.replace(",", " ").split()}

    every = ("explicit", "synonym", "implicit")
    others = set().union(*(words(v, a, every) for a in vocab.wording for v in vocab.values(a)
                           if (a, v) != (attribute, value)))
    return sorted(words(value, attribute, ("explicit", "synonym")) | (words(value, attribute, ("implicit",)) - others))


def words_as(pipe, words: list[str], substitute: str, label: str) -> WeightDelta:
    """The delta that gives each single-token word of ``words`` the input embedding of ``substitute``.

    ``pipe`` is left unchanged. `ValueError` when ``substitute`` is not one token, when no word is,
    or when the text encoder has no input token embedding under the expected name."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    params = dict(te.named_parameters())
    name = _EMBEDDINGS if _EMBEDDINGS in params else "text_model." + _EMBEDDINGS
    if name not in params:
        raise ValueError(f"the text encoder has no {_EMBEDDINGS}: a words-as control needs a CLIP text encoder")
    target = _single_token(tok, substitute)
    if target is None:
        raise ValueError(f"the substitute {substitute!r} is not one token of the tokenizer")
    ids = {w: i for w in words if (i := _single_token(tok, w)) is not None and w != substitute}
    if not ids:
        raise ValueError(f"none of {words} is one token of the tokenizer")
    full = f"text_encoder.{name}"
    original = snapshot(pipe, [full])
    table = te.get_input_embeddings().weight
    edited = table.detach().clone()
    edited[list(ids.values())] = table[target].detach()
    return WeightDelta.from_state_dicts(original, {full: edited}, method=label, seed=None,
                                        config={"control": "words-as", "substitute": substitute, "words": sorted(ids),
                                                "multi_token_skipped": sorted(set(words) - set(ids))})


def control_delta(pipe, control: str, concept: ConceptSpec) -> WeightDelta:
    """The delta of ``control`` (one of `CONTROLS`) for ``concept``."""
    if control != "words-as-anchor":
        raise ValueError(f"unknown control {control!r}; known: {', '.join(CONTROLS)}")
    if len((concept.anchor or "").split()) != 1:
        raise ValueError(f"concept {concept.name!r} needs a one-word anchor to read its words as "
                         f"(it has {concept.anchor!r})")
    return words_as(pipe, concept_words(concept), concept.anchor.strip(), control_label(control, concept))


def control_label(control: str, concept: ConceptSpec) -> str:
    """A control row's name: ``control-words-as-<anchor>``."""
    return f"control-{control.replace('anchor', (concept.anchor or '').strip())}"
