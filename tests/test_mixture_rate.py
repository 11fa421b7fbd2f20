"""benchmarks/mixture_rate.py: the mixture prompts name two kept values of the concept's attribute, in
both orders, and never a word of the concept itself."""

import importlib.util
from pathlib import Path

from erasekit.world.vocabulary import load_vocabulary

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mixture_rate", ROOT / "benchmarks" / "mixture_rate.py")
mixture_rate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mixture_rate)


def test_mixture_prompts_name_two_kept_values_and_never_the_concept():
    vocab = load_vocabulary()
    for concept in ("red", "circle"):
        attribute = vocab.attribute_of(concept)
        kept = [v for v in vocab.values(attribute) if v != concept]
        pairs = mixture_rate.mixture_prompts(concept)
        assert len(pairs) == len(kept) * (len(kept) - 1) // 2
        own = set(vocab.words(attribute, concept, "explicit") + vocab.words(attribute, concept, "synonym"))
        for pair, prompts in pairs.items():
            a, b = pair.split("+")
            assert a in kept and b in kept and len(prompts) == len(set(prompts))
            assert not any(w in p.split() for p in prompts for w in own)
            assert {a + " " + b, b + " " + a} <= {" ".join(p.split()[-2:] if attribute == "shape" else p.split()[1:3])
                                                  for p in prompts}
    assert "a tangerine violet circle" in mixture_rate.mixture_prompts("red")["orange+purple"]
    assert "an orange purple circle" in mixture_rate.mixture_prompts("red")["orange+purple"]
    assert "a red square triangle" in mixture_rate.mixture_prompts("circle")["square+triangle"]


def test_the_page_is_generated_from_the_stored_measurements():
    assert mixture_rate.PAGE.read_text() == mixture_rate.page()
