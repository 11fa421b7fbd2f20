"""TRCE stage 2: the contrastive loss, the trajectory cache, and both TRCE methods' deltas."""

import pytest
import torch

import erasekit.methods.trce.trajectories as trajectories
import erasekit.methods.trce.visual as trce_v
from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method
from erasekit.methods.trce.textual import TRCETextualConfig, erase_textual
from erasekit.methods.trce.visual import TRCEConfig, TRCEVisualConfig, load_or_sample, triplet_margin
from erasekit.models.scopes import get_scope
from tiny_helpers import snapshot_weights

CONCEPT = ConceptSpec(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog",
                      templates=["a photo of {}", "{} in a garden"])
TINY = dict(n_trajectories=2, n_uncond=2, n_steps=4, max_step=1, epochs=1, lr=1e-3, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")




# ------------------------------------------------------------------ the loss
def test_margin_loss_zero_when_closer_to_safe_by_the_margin():
    f_safe, f_unsafe = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    m = 0.01
    # x = a * 1: ||x - safe||^2 - ||x - unsafe||^2 = a^2 - (1 - a)^2 = 2a - 1 (per-element means)
    for a, expected in [(0.0, 0.0), (0.49, 0.0), (0.4949, 0.0), (0.5, m), (0.9, 0.8 + m)]:
        x = torch.full((1, 4, 2, 2), a)
        assert triplet_margin(x, f_safe, f_unsafe, m).item() == pytest.approx(max(0.0, 2 * a - 1 + m), abs=1e-6)
        assert (triplet_margin(x, f_safe, f_unsafe, m).item() > 0) == (2 * a - 1 + m > 0)
    # batch: mean of per-sample hinges
    x = torch.stack([torch.zeros(4, 2, 2), torch.ones(4, 2, 2)])
    assert triplet_margin(x, f_safe, f_unsafe, m).item() == pytest.approx((0 + 1 + m) / 2)


# ------------------------------------------------------------------ the cache
def test_trajectory_cache_is_reused_and_keyed(pipe, tmp_path, monkeypatch):
    cfg = TRCEVisualConfig(**TINY, trajectory_cache=str(tmp_path))
    prompts = CONCEPT.target_prompts()
    first = load_or_sample(pipe, prompts, cfg)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and first.n == 2 and first.n_uncond == 2
    calls = []
    real = trajectories.sample_trajectories
    monkeypatch.setattr(trajectories, "sample_trajectories", lambda *a: calls.append(1) or real(*a))
    again = load_or_sample(pipe, prompts, cfg)
    assert not calls and torch.equal(again.latent("cond", 1, 1), first.latent("cond", 1, 1))
    assert torch.equal(again.latent("uncond", 0, 3), first.latent("uncond", 0, 3))
    # Another seed is another key; a file path with a stale key is resampled in place.
    load_or_sample(pipe, prompts, cfg.model_copy(update={"seed": 1}))
    assert len(calls) == 1 and len(list(tmp_path.glob("*.safetensors"))) == 2
    fixed = TRCEVisualConfig(**TINY, trajectory_cache=str(files[0]))
    load_or_sample(pipe, prompts, fixed.model_copy(update={"seed": 2}))
    assert len(calls) == 2


def test_trajectories_shapes(pipe):
    t = trajectories.sample_trajectories(pipe, CONCEPT.target_prompts(), TRCEVisualConfig(**TINY))
    assert t["cond"].shape == (2, 2, 4, 8, 8) and t["uncond"].shape == (2, 4, 4, 8, 8)
    assert t["prompt_index"].tolist() != [] and max(t["prompt_index"].tolist()) < 4


# ------------------------------------------------------------------ the methods
def test_trce_v_delta_in_visual_scope_and_pipe_unchanged(pipe):
    before = snapshot_weights(pipe)
    delta = get_method("trce-v").erase(pipe, CONCEPT, TRCEVisualConfig(**TINY))
    visual = set(get_scope("visual").select(pipe.unet, prefix="unet."))
    assert delta.names and set(delta.names) <= visual
    assert any(".attn1." in n for n in delta.names) and any(".attn2.to_q" in n for n in delta.names)
    assert delta.manifest.metrics["iterations"] == 2
    after = snapshot_weights(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_trce_combines_both_stages_in_one_delta(pipe):
    before = snapshot_weights(pipe)
    cfg = TRCEConfig(**TINY, n_general=8)
    delta = get_method("trce").erase(pipe, CONCEPT, cfg)
    kv = set(get_scope("cross_attn_kv").select(pipe.unet, prefix="unet."))
    visual = set(get_scope("visual").select(pipe.unet, prefix="unet."))
    names = set(delta.names)
    assert names & kv and names & visual and names <= kv | visual
    stage1 = erase_textual(pipe, CONCEPT, TRCETextualConfig(**{k: getattr(cfg, k) for k in TRCETextualConfig.model_fields}))
    assert set(stage1.names) == names & kv
    assert all(torch.equal(stage1.tensors[n], delta.tensors[n]) for n in stage1.names)
    after = snapshot_weights(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)


# ------------------------------------------------------------------ the anchor and the hinge's activity
def _anchored(anchor: str) -> ConceptSpec:
    return CONCEPT.model_copy(update={"anchor": anchor})


@pytest.mark.parametrize("method", ["trce-v", "trce"])
def test_an_empty_anchor_is_refused_in_one_line(pipe, method):
    before = snapshot_weights(pipe)
    with pytest.raises(ValueError) as err:
        get_method(method).erase(pipe, _anchored(""), get_method(method).config_cls(**TINY))
    msg = str(err.value)
    assert "\n" not in msg and "empty prompt" in msg and "--anchor" in msg and "never fires" in msg
    after = snapshot_weights(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_an_empty_anchor_leaves_no_sample_active_and_a_real_one_does(pipe, monkeypatch):
    """With c_s = "" the hinge is -beta(beta - 2)||d||^2 + m at the conditional prediction and
    -beta^2||d||^2 + m at the unconditional one: negative once ||d||^2 > m / (beta(beta - 2)).  The
    tiny random pipeline's concept offsets are far smaller than SD's, so the margin is scaled down
    with them (m = 1e-6) to put it in the regime SD is in at m = 0.01."""
    monkeypatch.setattr(trce_v, "require_safe_anchor", lambda *a: None)
    cfg = TRCEVisualConfig(**{**TINY, "n_trajectories": 4, "epochs": 2}, margin=1e-6)
    empty = trce_v.erase_visual(pipe, _anchored(""), cfg).manifest.metrics["hinge"]
    real = trce_v.erase_visual(pipe, _anchored("dog"), cfg).manifest.metrics["hinge"]
    assert empty["samples"] == [4, 4, 4, 4] and real["samples"] == [4, 4, 4, 4]  # 8 iterations x 2 terms
    assert empty["active_fraction"] == [0.0, 0.0, 0.0, 0.0] and min(empty["mean_margin"]) > 0
    assert min(real["active_fraction"]) > 0 and max(real["mean_margin"]) < 0


def test_hinge_activity_per_quarter():
    act = trce_v.HingeActivity(8)
    for step in range(8):  # quarter q holds steps 2q and 2q + 1
        act.record(step, torch.tensor([0.5, -0.5]) if step < 4 else torch.tensor([-0.25, -0.75]), 0.01)
    out = act.summary()
    assert out["active_fraction"] == [0.5, 0.5, 0.0, 0.0] and out["samples"] == [4, 4, 4, 4]
    assert out["mean_margin"] == pytest.approx([0.01, 0.01, 0.51, 0.51])
