"""KSCU: the key-step schedule matches the spec; the method edits only its scope and resumes exactly."""

import shutil

import pytest
import torch

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method
from erasekit.methods.kscu import KIND_SCOPES, KSCUConfig, KSCUStep, augment_prompt, key_step_schedule
from erasekit.models.delta import snapshot
from erasekit.models.scopes import get_scope
from erasekit.training import Trainer, list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")



def _concept(kind):
    return ConceptSpec(name="cat", kind=kind, targets=["cat", "kitten"], anchor="dog",
                       templates=["a photo of {}", "{} in a garden"])


# ------------------------------------------------------------------ schedule
def test_nudity_object_schedule_matches_the_spec():
    iters, start = KSCUConfig().resolved("unsafe")
    assert (iters, start) == (750, 14) and KSCUConfig().resolved("object") == (750, 14)
    sched = key_step_schedule(iters, start)
    assert len(sched) == 750
    assert sched[:36] == list(range(14, 50)) and sched[36] == 14
    assert sched[:288] == list(range(14, 50)) * 8  # 8 traversals of [14, 49] ...
    assert sched[288:288 + 35] == list(range(15, 50))  # ... then S = 15
    assert sched[288 + 35] == 15


def test_cap_and_truncation():
    sched = key_step_schedule(20000, 14)
    assert len(sched) == 20000 and min(sched[-100:]) == 44 and 43 not in sched[-100:]
    starts = [b for a, b in zip(sched, sched[1:]) if b <= a]
    assert max(starts) == 44
    assert key_step_schedule(7, 47) == [47, 48, 49, 47, 48, 49, 47]
    assert key_step_schedule(0, 14) == []


def test_style_and_instance_defaults():
    assert KSCUConfig().resolved("style") == (500, 24) and key_step_schedule(500, 24)[:3] == [24, 25, 26]
    assert KSCUConfig().resolved("instance") == (200, 40) and key_step_schedule(200, 40)[:11] == [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 40]
    shapes = KSCUConfig.preset("shapes")
    assert shapes.resolved("object") == (150, 7) and shapes.resolved("style")[1] == 12
    assert key_step_schedule(5000, 7, n_steps=25)[-1] <= 24 and min(key_step_schedule(5000, 7, n_steps=25)[-50:]) == 22


def test_augmented_prompts_keep_the_concept():
    concept = _concept("object")
    g = torch.Generator().manual_seed(0)
    outs = {augment_prompt(concept, "kitten", "a photo of {}", g) for _ in range(40)}
    assert len(outs) > 3 and all("kitten" in o for o in outs)


# ------------------------------------------------------------------ the method
def _erase(pipe, kind, **kw):
    cfg = KSCUConfig(iterations=4, n_steps=6, start_step=3, lr=1e-3, progress=False, **kw)
    return get_method("kscu").erase(pipe, _concept(kind), cfg)


@pytest.mark.parametrize("kind", ["object", "style"])
def test_delta_stays_in_scope_and_pipe_is_unchanged(pipe, kind):
    names = [f"unet.{n}" for n, _ in pipe.unet.named_parameters()]
    before = snapshot(pipe, names)
    delta = _erase(pipe, kind)
    scope = set(get_scope(KIND_SCOPES[kind]).select(pipe.unet, prefix="unet."))
    assert delta.names and set(delta.names) <= scope
    if kind == "object":
        assert not any(".attn2." in n for n in delta.names)
    else:
        assert all(".attn2." in n for n in delta.names)
    after = snapshot(pipe, names)
    assert all(torch.equal(before[n], after[n]) for n in names)


def test_by_kind_settings_apply_to_their_kind_only_and_explicit_overrides_win(pipe):
    """``by_kind`` replaces fields for one concept kind: the run uses them (scope, manifest), others keep theirs."""
    by_kind = {"attribute": {"scope": "cross_attn_kv", "lr": 1e-2}}
    delta = _erase(pipe, "attribute", by_kind=by_kind)
    assert set(delta.names) <= set(get_scope("cross_attn_kv").select(pipe.unet, prefix="unet."))
    assert delta.manifest.config["lr"] == 1e-2 and delta.manifest.config["by_kind"] == {}
    assert not any(".attn2." in n for n in _erase(pipe, "object", by_kind=by_kind).names)
    # a field given explicitly with a preset wins over the preset's per-kind value
    shapes = KSCUConfig.preset("shapes")
    assert shapes.for_kind("attribute").lr == 1e-3 and shapes.for_kind("object").lr == 1e-4
    assert KSCUConfig.preset("shapes", lr=5e-4).for_kind("attribute").lr == 5e-4
    with pytest.raises(ValueError, match="unknown concept kind"):
        KSCUConfig(by_kind={"colour": {"lr": 1.0}})
    with pytest.raises(ValueError, match="cannot be set per kind"):
        KSCUConfig(by_kind={"object": {"learning_rate": 1.0}})


def test_running_trajectory_is_reused_then_restarted(pipe):
    cfg = KSCUConfig(iterations=4, n_steps=6, start_step=3, progress=False)
    trainer = Trainer(pipe.unet, "cross_attn", iterations=4, progress=False)
    step = KSCUStep(pipe, trainer, _concept("style"), cfg, 4, key_step_schedule(4, 3, 6))
    g = torch.Generator().manual_seed(0)
    step.latent(3, g)
    z3, prompt = step.z.clone(), step.prompt
    cond = step.embeds[prompt : prompt + 1]
    z4 = step.latent(4, g)
    assert step.s == 4 and step.prompt == prompt
    assert torch.equal(z4, step.sampler.denoise(pipe.unet, z3, 3, 4, cond, step.uncond, 3.0))
    step.latent(3, g)  # wrap-around: fresh noise
    assert step.s == 3 and not torch.equal(step.z, z3)


def test_resume_continues_the_running_trajectory(pipe, tmp_path):
    full = _erase(pipe, "style", checkpoint_dir=str(tmp_path / "a"), checkpoint_every=2, keep_checkpoints=5)
    (tmp_path / "b").mkdir()
    step2 = dict(list_checkpoints(tmp_path / "a"))[2]
    shutil.copy(step2, tmp_path / "b" / step2.name)
    resumed = _erase(pipe, "style", checkpoint_dir=str(tmp_path / "b"), checkpoint_every=2, resume=True)
    assert resumed.manifest.metrics["resumed_from"] == 2
    assert set(full.names) == set(resumed.names)
    assert all(torch.equal(full.tensors[n], resumed.tensors[n]) for n in full.names)
