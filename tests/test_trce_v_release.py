"""TRCE stage 2's release options equal the release's formulas, and nothing disables stage 2 silently.

References are written here from the release's stage-2 script as read (targets built from the
conditional output, the latent after step s paired with step s's timestep, a batch of preservation
latents with timesteps drawn in their steps' intervals, gradients never reset).
"""

import logging

import pytest
import torch
import torch.nn.functional as F

import erasekit.methods.trce.visual as trce_v
from erasekit.concepts.packs import get_concept, list_concepts
from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method
from erasekit.methods.losses import guided_target
from erasekit.methods.trce.visual import TRCEConfig, TRCEVisualConfig, VisualStep, load_or_sample
from erasekit.models.conditioning import encode_conditions
from erasekit.models.ddim import DDIMSampler
from erasekit.models.unet_io import predict
from erasekit.training import Trainer
from tiny_helpers import snapshot_weights

CONCEPT = ConceptSpec(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog",
                      templates=["a photo of {}", "{} in a garden"])
TINY = dict(n_trajectories=2, n_uncond=4, n_steps=4, max_step=1, epochs=1, lr=1e-3, progress=False, margin=10.0)

pytestmark = pytest.mark.usefixtures("one_thread")


def _step(pipe, cfg: TRCEVisualConfig) -> VisualStep:
    cache = load_or_sample(pipe, CONCEPT.target_prompts(), cfg)
    trainer = Trainer.from_config(pipe.unet, "visual", cfg, cfg.total_iterations())
    return VisualStep(pipe, trainer, CONCEPT, cfg, cache, original=trainer.originals)


def test_release_targets_are_guided_from_the_conditional_output():
    u, c = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert torch.allclose(guided_target(u, c, 15.0, "release"), c + 15.0 * (c - u))
    # the release's targets are the paper's with beta + 1
    assert torch.allclose(guided_target(u, c, 15.0, "release"), guided_target(u, c, 16.0), atol=1e-5)


def test_release_step_equals_the_release_formula(pipe):
    """One iteration at the original weights with every release option on, against the release's loss."""
    cfg = TRCEVisualConfig(**{**TINY, "max_step": 0}, targets="release", pairing="release", pres_batch=2,
                       pres_pick="sequential", order="sequential")
    step_fn = _step(pipe, cfg)
    cache, sampler, n = step_fn.cache, DDIMSampler(pipe.scheduler, cfg.n_steps), cfg.n_steps
    width = pipe.scheduler.config.num_train_timesteps // n
    g = torch.Generator().manual_seed(5)
    z, t, p, zu, tu = step_fn.sample(1, g)
    # order "sequential": iteration 1 takes trajectory 1; max_step 0 pairs the latent after step 0 with t_0
    assert torch.equal(z, cache.latent("cond", 1, 1)) and t == sampler.timestep(0)
    assert p == int(cache.prompt_index[1])
    # pres_pick "sequential": iteration 1 takes unconditional latents 2 and 3, each after its step su,
    # with a timestep drawn in [(n - 1 - su) * width, (n - su) * width)
    for k, (u, tk) in enumerate(zip((2, 3), tu)):
        su = n - 1 - tk // width
        assert 0 <= su < n and torch.equal(zu[k : k + 1], cache.latent("uncond", u, su + 1))
    # the loss: the release's formula, at the original weights (reference = live model)
    loss = step_fn(1, torch.Generator().manual_seed(5))
    cond = encode_conditions(pipe, CONCEPT.target_prompts())[p : p + 1]
    safe = encode_conditions(pipe, CONCEPT.anchor_prompts())[p : p + 1]
    empty = encode_conditions(pipe, [""])
    with torch.no_grad():
        e_m, e_s, e_u = (predict(pipe.unet, z, t, c) for c in (cond, safe, empty))
        prefer, reject = e_s + 15.0 * (e_s - e_u), e_m + 15.0 * (e_m - e_u)
        hinge = 0.0
        for x in (e_m, e_u):  # the trained model's outputs equal the reference's at step 0
            score = F.mse_loss(x, prefer) - F.mse_loss(x, reject) + cfg.margin
            hinge = hinge + torch.clamp(score, min=0) / 2
        # every preservation term is 0 here (live == reference): the release adds its constant 0.01 / 4,
        # which moves no weight, so it is left out
    assert float(loss.detach()) == pytest.approx(float(hinge), rel=1e-5)
    assert float(hinge) > 0  # the hinge is active, so the comparison is not 0 == 0


def test_gradients_never_reset_add_up(pipe):
    """grad_reset="never": iteration k's gradient is the sum of the plain gradients of iterations 0..k."""
    plain, summed = (_step(pipe, TRCEVisualConfig(**TINY, grad_reset=r)) for r in ("step", "never"))
    params = list(summed.trainer.params.values())
    expected = [torch.zeros_like(q) for q in params]
    for k in range(3):
        grads = torch.autograd.grad(plain(k, torch.Generator().manual_seed(k)), params, allow_unused=True)
        expected = [e + (gr if gr is not None else 0) for e, gr in zip(expected, grads)]
        loss = summed(k, torch.Generator().manual_seed(k))
        got = torch.autograd.grad(loss, params, allow_unused=True)
        assert all(torch.allclose(gr if gr is not None else torch.zeros_like(e), e, atol=1e-6, rtol=1e-4)
                   for gr, e in zip(got, expected))
    assert any(float(e.abs().max()) > 0 for e in expected)


@pytest.mark.slow
def test_release_options_change_the_delta_and_defaults_keep_the_fingerprint(pipe):
    base = TRCEVisualConfig(**TINY)
    assert "targets" not in base.fingerprint() and "pres_reference" not in base.fingerprint()
    ref = trce_v.erase_visual(pipe, CONCEPT, base)
    for change in ({"targets": "release"}, {"pairing": "release"}, {"pres_batch": 3}, {"optimizer": "adamw"},
                   {"grad_reset": "never"}):
        other = trce_v.erase_visual(pipe, CONCEPT, TRCEVisualConfig(**TINY, **change))
        assert other.delta_id != ref.delta_id, change
        assert other.names == ref.names


@pytest.mark.slow
def test_full_trce_preservation_reference_option(pipe):
    cfg = dict(**TINY, n_general=8, lambda_pres=1e4)
    paper = get_method("trce").erase(pipe, CONCEPT, TRCEConfig(**cfg))
    release = get_method("trce").erase(pipe, CONCEPT, TRCEConfig(**cfg, pres_reference="stage1"))
    assert paper.delta_id != release.delta_id


# ------------------------------------------------------------------ nothing disables stage 2 silently
def test_every_bundled_concept_gives_stage_2_a_live_anchor():
    for name in list_concepts():
        for preset in ("sd", "shapes"):
            trce_v.require_live_stage2(get_concept(name), TRCEConfig.preset(preset), "trce")


@pytest.mark.parametrize("concept, change, says", [
    (CONCEPT.model_copy(update={"anchor": ""}), {}, "empty prompt"),
    (CONCEPT.model_copy(update={"anchor": "Cat"}), {}, "to itself"),
    (CONCEPT, {"beta": 0.0}, "beta=0"),
    (CONCEPT, {"lr": 0.0}, "lr=0.0"),
    (CONCEPT, {"epochs": 0}, "0 iterations"),
])
@pytest.mark.parametrize("method", ["trce-v", "trce"])
def test_a_setting_under_which_stage_2_cannot_move_is_refused(pipe, method, concept, change, says):
    before = snapshot_weights(pipe)
    with pytest.raises(ValueError) as err:
        get_method(method).erase(pipe, concept, get_method(method).config_cls(**{**TINY, **change}))
    assert "\n" not in str(err.value) and says in str(err.value)
    after = snapshot_weights(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.slow
def test_a_run_whose_hinge_never_fires_is_flagged(pipe, monkeypatch, caplog):
    """A margin far below the hinge's values leaves every sample inactive: the manifest says so, loudly."""
    cfg = TRCEVisualConfig(**{**TINY, "margin": -1e6})
    with caplog.at_level(logging.WARNING, logger="erasekit.methods.trce.visual"):
        hinge = trce_v.erase_visual(pipe, CONCEPT, cfg).manifest.metrics["hinge"]
    assert hinge["inert"] and max(hinge["active_fraction"]) == 0
    assert any("active on no sample" in r.getMessage() for r in caplog.records)
    live = trce_v.erase_visual(pipe, CONCEPT, TRCEVisualConfig(**TINY)).manifest.metrics["hinge"]
    assert not live["inert"] and max(live["active_fraction"]) > 0
