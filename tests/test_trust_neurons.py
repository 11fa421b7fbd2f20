"""TRuST's neuron-level masks, CIP toward zero, the stopping rule, and SalUn++ (tiny pipelines)."""

import pytest
import torch

from erasekit.concepts.packs import get_concept, in_context_prompts
from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method
from erasekit.methods.saliency import SCORERS, jaccard, neuron_masks, neuron_scores, register_scorer, rows_to_entries
from erasekit.methods.trust import SalUnPlusPlusConfig, TRuSTConfig, cip_penalty
from erasekit.methods.trust.stopping import StopRule, change_summary

PLAIN = ConceptSpec(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog", templates=["a photo of {}"])

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(cls=TRuSTConfig, **kw):
    base = dict(iterations=4, n_steps=2, pool_size=2, retain_pool_size=2, lr=1e-2, progress=False, scorer="forget")
    return cls(**{**base, **kw})


def _record():
    seen = []
    return seen, lambda step, masks: seen.append((step, masks))


def _rows_whole(mask: torch.Tensor) -> bool:
    rows = mask.reshape(mask.shape[0], -1)
    return bool((rows.all(dim=1) | ~rows.any(dim=1)).all())


# ------------------------------------------------------------------ mask arithmetic
def test_neuron_masks_threshold_rows_with_hysteresis():
    g = {"w": torch.tensor([[10.0, 0.0], [0.0, 0.1], [0.2, 0.0], [0.1, 0.1], [0.0, 0.0]])}
    s = neuron_scores(g)["w"]
    assert torch.allclose(s, torch.tensor([10.0, 0.1, 0.2, 0.2, 0.0]))
    rows = neuron_masks({"w": s}, xi=1.0)["w"]
    assert rows.tolist() == [True, False, False, False, False]
    # row 0 falls below the entry band but stays above the keep band: held by hysteresis
    s2 = torch.tensor([1.0, 0.1, 3.0, 0.2, 0.0])
    fresh = neuron_masks({"w": s2}, xi=1.0)["w"]
    held = neuron_masks({"w": s2}, xi=1.0, previous={"w": rows}, xi_keep=-0.5)["w"]
    assert fresh.tolist() == [False, False, True, False, False]
    assert held.tolist() == [True, False, True, False, False]
    entries = rows_to_entries({"w": held}, g)["w"]
    assert entries.shape == (5, 2) and _rows_whole(entries) and entries[0].all() and not entries[1].any()
    assert jaccard({"w": entries}, {"w": entries}) == 1.0
    assert jaccard({"w": rows_to_entries({"w": fresh}, g)["w"]}, {"w": entries}) == 0.5


def test_cip_toward_zero_is_masked_l1_of_the_weights():
    p = {"w": torch.tensor([[1.0, -2.0], [3.0, -4.0]])}
    o = {"w": torch.zeros(2, 2) + 1.0}
    m = {"w": torch.tensor([[True, True], [False, False]])}
    assert float(cip_penalty(p, o, m, "zero")) == 3.0
    assert float(cip_penalty(p, o, m, "original")) == 3.0  # |1-1| + |-2-1|
    with pytest.raises(ValueError):
        cip_penalty(p, o, m, "elsewhere")


def test_change_summary_counts_neurons_entries_and_the_90_percent_share():
    o = {"w": torch.zeros(3, 4)}
    p = {"w": torch.zeros(3, 4)}
    p["w"][0, 0], p["w"][0, 1], p["w"][2, 3] = 10.0, 1.0, 1.0
    s = change_summary(p, o)
    assert s == {"neurons_changed": 2, "neurons_total": 3, "entries_changed": 3, "entries_90": 1}


# ------------------------------------------------------------------ whole runs
def test_masks_are_neuron_rows_and_consecutive_masks_overlap(pipe):
    seen, cb = _record()
    delta = get_method("trust").erase(pipe, PLAIN, tiny_cfg(iterations=6), mask_callback=cb)
    assert len(seen) == 6
    for _, masks in seen:
        assert any(m.any() for m in masks.values())
        assert all(_rows_whole(m) for m in masks.values())
    params = dict(pipe.unet.named_parameters())
    for name, new in delta.tensors.items():
        assert _rows_whole(new != params[name[len("unet."):]].detach())  # whole neurons move, or none
    m = delta.manifest.metrics
    overlaps = [jaccard(a, b) for (_, a), (_, b) in zip(seen, seen[1:])]
    assert m["mask_jaccard_mean"] == pytest.approx(sum(overlaps) / len(overlaps))
    assert m["mask_jaccard_mean"] >= 0.8
    assert m["neurons_changed"] <= m["neurons_total"] and m["entries_90"] <= m["entries_changed"]
    # the running mean and hysteresis are what keep the mask in place: without them it moves more
    seen_free, cb = _record()
    free = get_method("trust").erase(pipe, PLAIN, tiny_cfg(iterations=6, saliency_momentum=0.0, xi_keep=None),
                                     mask_callback=cb)
    assert free.manifest.metrics["mask_jaccard_mean"] < m["mask_jaccard_mean"]


def test_cip_drives_the_selected_neurons_toward_zero(pipe):
    seen, cb = _record()
    cfg = tiny_cfg(iterations=5, regularizer="cip", beta=10.0, mask_every=0, lr=2e-2)
    delta = get_method("trust").erase(pipe, PLAIN, cfg, mask_callback=cb)
    masks = seen[0][1]
    params = dict(pipe.unet.named_parameters())
    shrunk = 0
    for name, new in delta.tensors.items():
        rel = name[len("unet."):]
        old, m = params[rel].detach(), masks[rel]
        assert torch.equal(new[~m], old[~m])
        assert new[m].abs().sum() < old[m].abs().sum()
        shrunk += 1
    assert shrunk > 0


def test_salun_pp_recomputes_an_entry_mask_every_step(pipe):
    seen, cb = _record()
    delta = get_method("salun++").erase(pipe, PLAIN, tiny_cfg(SalUnPlusPlusConfig, iterations=3), mask_callback=cb)
    assert [s for s, _ in seen] == [0, 1, 2]
    assert not all(_rows_whole(m) for _, masks in seen for m in masks.values())  # entries, not rows
    m = delta.manifest.metrics
    assert m["regularizer"] == "none" and m["mask_unit"] == "entry" and m["mask_recomputations"] == 3
    with pytest.raises(ValueError, match="salun\\+\\+"):
        get_method("salun++").erase(pipe, PLAIN, tiny_cfg(SalUnPlusPlusConfig, mask_every=0))


# ------------------------------------------------------------------ stopping rule
class _FakeStep:
    scorer_name = "detector"

    def __init__(self, pipe):
        self.pipe, self.unet, self.prompts, self.embeds = pipe, pipe.unet, ["a", "b"], None


def _stops_at(pipe, presences: list[float]) -> int | None:
    rule = StopRule(_FakeStep(pipe), TRuSTConfig(stop_ratio=0.2, stop_every=5, stop_probes=2, stop_steps=2), PLAIN)
    values = iter(presences)
    rule.presence = lambda: next(values)
    for step in range(5 * len(presences)):
        if rule.check(step):
            return rule.stopped_at
    return None


def test_stop_rule_stops_earlier_when_the_presence_falls_faster(pipe):
    easy = _stops_at(pipe, [0.9, 0.5, 0.1, 0.1, 0.1])
    hard = _stops_at(pipe, [0.9, 0.8, 0.6, 0.3, 0.15])
    assert easy == 10 and hard == 20
    assert _stops_at(pipe, [0.9, 0.8, 0.7]) is None
    with pytest.raises(ValueError, match="image scorer"):
        get_method("trust").erase(pipe, PLAIN, tiny_cfg(stop_ratio=0.5))


def test_a_stopped_run_equals_the_run_cut_at_its_stopping_step(pipe):
    """After the rule fires, the remaining iterations change nothing; the presence probes draw no training sample."""
    state = {"calls": 0}

    def falling_scorer(pipe, concept, **_):
        def score(s):
            if s.x0 is None:  # a saliency sample: any differentiable score
                return s.output.float().pow(2).mean()
            state["calls"] += 1
            return torch.tensor(1.0 if state["calls"] <= 2 else 0.05)  # the third check (step 4) falls
        return score

    if "test-falling" not in SCORERS:
        register_scorer("test-falling", falling_scorer)
    cfg = dict(iterations=6, stop_ratio=0.5, stop_every=2, stop_probes=1, stop_steps=1, scorer="test-falling",
               saliency_momentum=0.0)
    stopped = get_method("trust").erase(pipe, PLAIN, tiny_cfg(**cfg))
    m = stopped.manifest.metrics
    assert m["stopped_at"] == 4 and m["iterations"] == 4 and m["iterations_budget"] == 6
    state["calls"] = 0
    cut = get_method("trust").erase(pipe, PLAIN, tiny_cfg(**{**cfg, "iterations": 4}))
    assert cut.manifest.metrics["stopped_at"] is None
    assert all(torch.equal(stopped.tensors[n], cut.tensors[n]) for n in cut.names)


def test_image_scorers_skip_the_unused_anchor_reference_and_the_delta_is_unchanged(pipe, monkeypatch):
    """An image scorer reads only the edited prediction: no reference forward, the same delta."""
    import erasekit.methods.trust.step as step_module

    seen = []

    def image_scorer(pipe, concept, **_):
        def score(s):
            seen.append(s.reference is None)
            return s.output.float().pow(2).mean()
        return score

    if "test-image" not in SCORERS:
        register_scorer("test-image", image_scorer)
    cfg = tiny_cfg(scorer="test-image", iterations=3)
    with_reference = get_method("trust").erase(pipe, PLAIN, cfg)
    assert seen and not any(seen)
    seen.clear()
    monkeypatch.setattr(step_module, "IMAGE_SCORERS", ("test-image",))
    without = get_method("trust").erase(pipe, PLAIN, cfg)
    assert seen and all(seen)
    assert without.delta_id == with_reference.delta_id


def test_in_context_probes_measure_the_concept_on_prompts_training_never_sees(pipe):
    """stop_prompts='in-context': the probes name red beside a shape ("a crimson star"), never "a red shape"."""
    seen = []

    def recording_scorer(pipe, concept, **_):
        def score(s):
            if s.x0 is None:
                return s.output.float().pow(2).mean()
            seen.append(s.prompt)
            return torch.tensor(1.0)
        return score

    if "test-recording" not in SCORERS:
        register_scorer("test-recording", recording_scorer)
    red = get_concept("shapes/red")
    cfg = dict(iterations=1, stop_ratio=0.5, stop_every=1, stop_probes=6, stop_steps=1, scorer="test-recording",
               saliency_momentum=0.0)
    delta = get_method("trust").erase(pipe, red, tiny_cfg(**cfg, stop_prompts="in-context"))
    assert delta.manifest.metrics["stop_probes_from"] == "in-context"
    context = in_context_prompts(red)
    assert "a crimson star" in context and len(context) == 4 * 6 * 8  # words x shapes x templates
    assert len(seen) == 6 and set(seen) <= set(context) and not set(seen) & set(red.target_prompts())
    seen.clear()
    get_method("trust").erase(pipe, red, tiny_cfg(**cfg))
    assert len(seen) == 6 and set(seen) <= set(red.target_prompts())
    # a concept with no in-context set (free text, another world's) keeps its training prompts, and says so
    assert in_context_prompts(PLAIN) is None
    delta = get_method("trust").erase(pipe, PLAIN, tiny_cfg(**cfg, stop_prompts="in-context"))
    assert len(seen) == 12 and set(seen[6:]) <= set(PLAIN.target_prompts())
    assert delta.manifest.metrics["stop_probes_from"] == "targets"
