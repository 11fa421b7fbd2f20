"""ESD and KSCU conform to the authors' code: parameter sets, loss targets, key-step schedule, prompts.

References are written here from the releases' rules (rohitgandikota/erasing: the paper-era CompVis
script and the later diffusers port; ChaoShuoZhang/KeyStepConceptUnlearning), on the tiny SD-1 UNet.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import erasekit.methods.esd as esd
import erasekit.methods.kscu as kscu
from erasekit.concepts.spec import ConceptSpec
from erasekit.training import Trainer, step_generator
from erasekit.models.scopes import get_scope

pytestmark = pytest.mark.usefixtures("one_thread")

CONCEPT = ConceptSpec(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog",
                      templates=["a photo of {}", "{} in a garden"])
TRAINABLE = {"Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv"}


# ------------------------------------------------------------------ the releases' parameter sets
def paper_esd_u(unet):
    """The paper's script ('noxattn'): every parameter but attn2, time_embed and out.* (CompVis names;
    in diffusers time_embed -> time_embedding, out.0/out.2 -> conv_norm_out/conv_out)."""
    return {n for n, _ in unet.named_parameters()
            if "attn2" not in n and not n.startswith(("time_embedding.", "conv_norm_out.", "conv_out."))}


def port_modules(unet, inside_attn2: bool):
    """The diffusers port / KSCU: parameters of Linear/Conv modules whose name has (or lacks) 'attn2'."""
    return {f"{m}.{p}" for m, mod in unet.named_modules() if type(mod).__name__ in TRAINABLE
            and ("attn2" in m) == inside_attn2 for p, _ in mod.named_parameters(recurse=False)}


def paper_esd_x(unet):
    return {n for n, _ in unet.named_parameters() if "attn2" in n}


def _selected(pipe, scope):
    return set(get_scope(scope).select(pipe.unet))


def _counts(pipe, names):
    params = dict(pipe.unet.named_parameters())
    return len(names), sum(params[n].numel() for n in names)


def test_esd_u_scope_is_the_papers_by_default_and_the_ports_as_an_option(pipe):
    paper = _selected(pipe, esd.variant_scope(esd.ESDConfig(), "esd-u"))
    port = _selected(pipe, esd.variant_scope(esd.ESDConfig(u_scope="port"), "esd-u"))
    assert paper == paper_esd_u(pipe.unet) and port == port_modules(pipe.unet, inside_attn2=False)
    # the two differ: the paper's has the norms, the port's the time embedding and conv_out
    assert any("norm" in n for n in paper - port) and any(n.startswith("time_embedding") for n in port - paper)
    assert _counts(pipe, paper) != _counts(pipe, port)
    assert esd.variant_scope(esd.ESDConfig.preset("shapes"), "esd-u") == "non_cross_attn"  # Shapes keeps the port's


def test_esd_x_scope_is_both_releases(pipe):
    x = _selected(pipe, esd.variant_scope(esd.ESDConfig(), "esd-x"))
    assert x == paper_esd_x(pipe.unet) == port_modules(pipe.unet, inside_attn2=True)


@pytest.mark.parametrize("kind,release", [("unsafe", "noxattn"), ("object", "noxattn"), ("style", "xattn"),
                                          ("instance", "xattn")])
def test_kscu_scopes_are_the_releases(pipe, kind, release):
    selected = _selected(pipe, kscu.KIND_SCOPES[kind])
    assert selected == port_modules(pipe.unet, inside_attn2=release == "xattn")
    assert _counts(pipe, selected) == _counts(pipe, port_modules(pipe.unet, inside_attn2=release == "xattn"))


# ------------------------------------------------------------------ loss targets
def _recording(monkeypatch, module):
    calls = []
    real = module.predict

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out.detach().clone())
        return out

    monkeypatch.setattr(module, "predict", spy)
    return calls


def test_esd_loss_is_the_releases(pipe, monkeypatch):
    """loss = MSE(e_n, e_0 - g (e_p - e_0)) of the frozen model's e_0, e_p and the edited model's e_n."""
    cfg = esd.ESDConfig(n_steps=4, negative_guidance=2.0, progress=False)
    trainer = Trainer(pipe.unet, "cross_attn", iterations=1, progress=False)
    step = esd.ESDStep(pipe, trainer, CONCEPT, cfg)
    calls = _recording(monkeypatch, esd)
    loss = step(0, step_generator(0, 1))
    e_p, e_0 = calls[0].chunk(2)
    e_n = calls[1]
    assert torch.allclose(loss, F.mse_loss(e_n, e_0 - 2.0 * (e_p - e_0)), rtol=1e-6)


def test_kscu_loss_is_the_releases(pipe, monkeypatch):
    """loss = MSE(negative, neutral - g (positive - neutral))
            + lambda2 MSE(negative_neutral, neutral - (1000 - t) alpha (positive - neutral))."""
    cfg = kscu.KSCUConfig(n_steps=4, negative_guidance=1.0, progress=False)
    trainer = Trainer(pipe.unet, "non_cross_attn", iterations=2, progress=False)
    schedule = kscu.key_step_schedule(2, 1, 4)
    step = kscu.KSCUStep(pipe, trainer, CONCEPT, cfg, 2, schedule)
    calls = _recording(monkeypatch, kscu)
    loss = step(0, step_generator(0, 1))
    positive, neutral = calls[0].chunk(2)
    negative, negative_neutral = calls[1].chunk(2)
    t = step.sampler.timestep(schedule[0])
    expected = F.mse_loss(negative, neutral - 1.0 * (positive - neutral)) \
        + 1e-4 * F.mse_loss(negative_neutral, neutral - (1000.0 - t) * 2e-5 * (positive - neutral))
    assert torch.allclose(loss, expected, rtol=1e-6)


# ------------------------------------------------------------------ the key-step schedule
def release_schedule(iterations, start, num_steps, loops_before_shift=8, max_start=None):
    """The release's rule: traverse [S, E-1] repeatedly; after 8 loops S += 1, capped at ceil(0.9 E) - 1."""
    limit = math.ceil(0.9 * num_steps) - 1
    cap = limit if max_start is None else min(max_start, limit)
    if cap < start:
        raise ValueError("the release refuses a start step above its cap")
    out, current, loops = [], start, 0
    while len(out) < iterations:
        out.extend(range(current, num_steps))
        loops += 1
        if loops >= loops_before_shift:
            current, loops = min(current + 1, cap), 0
    return out[:iterations]


RELEASE_TABLE = {"nudity": (750, 14), "class": (750, 14), "style": (500, 24), "instance": (200, 40)}
KIND_OF = {"nudity": "unsafe", "class": "object", "style": "style", "instance": "instance"}


@pytest.mark.parametrize("mode", sorted(RELEASE_TABLE))
def test_kind_defaults_are_the_releases_table(mode):
    iterations, start = RELEASE_TABLE[mode]
    assert kscu.KIND_DEFAULTS[KIND_OF[mode]] == (iterations, start)
    assert kscu.KSCUConfig().resolved(KIND_OF[mode]) == (iterations, start)
    assert kscu.key_step_schedule(iterations, start, 50) == release_schedule(iterations, start, 50)


@pytest.mark.parametrize("iterations,start,steps,loops", [(750, 14, 50, 8), (2000, 14, 50, 8), (5000, 40, 50, 8),
                                                         (150, 7, 25, 8), (400, 12, 25, 2), (1000, 0, 50, 1),
                                                         (300, 44, 50, 8), (60, 20, 25, 3)])
def test_schedule_equals_the_releases_rule(iterations, start, steps, loops):
    assert kscu.key_step_schedule(iterations, start, steps, loops) == release_schedule(iterations, start, steps, loops)


# ------------------------------------------------------------------ prompts and rewordings
def test_sd_defaults_train_on_the_bare_concept_and_shapes_on_the_grid(pipe):
    trainer = Trainer(pipe.unet, "cross_attn", iterations=1, progress=False)
    assert esd.ESDStep(pipe, trainer, CONCEPT, esd.ESDConfig(n_steps=4)).prompts == ["cat"]
    grid = esd.ESDStep(pipe, trainer, CONCEPT, esd.ESDConfig.preset("shapes")).prompts
    assert grid == CONCEPT.target_prompts()
    k = kscu.KSCUStep(pipe, trainer, CONCEPT, kscu.KSCUConfig(n_steps=4), 2, [1, 2])
    assert k.pairs == [("cat", "{}")] and len(k.rewordings["cat"]) == 10
    k = kscu.KSCUStep(pipe, trainer, CONCEPT, kscu.KSCUConfig.preset("shapes"), 2, [1, 2])
    assert len(k.pairs) == 4 and k.rewordings == {}


def test_release_rewordings():
    words = kscu.release_augmentations("nude body", "unsafe", step_generator(0, 5))
    templates = kscu.RELEASE_TEMPLATES["concept"]
    assert len(words) == 10
    for i, prompt in enumerate(words):
        base = templates[i % 10].format("nude body").split()
        got = prompt.split()
        assert "nude" in got and "body" in got
        if i % 4 == 0:
            assert sorted(got) == sorted(base)
        elif i % 4 == 1:
            assert len(got) < len(base) and all(w in base for w in got)
        else:
            noise = got[0] if i % 4 == 2 else got[-1]
            rest = got[1:] if i % 4 == 2 else got[:-1]
            assert rest == base and 1 <= len(noise) <= 3 and noise.isalnum() and noise.isascii()
    assert kscu.release_augmentations("Van Gogh", "style", step_generator(0, 5))[1].count("Gogh") == 1


# ------------------------------------------------------------------ ESD's latent / timestep pairing
def paper_era_pairing(t_enc, n_steps=50):
    """The CompVis script: its DDIM sampler (timesteps 20 i + 1, i = 49..0) breaks after index t_enc - 1
    (t_enc 0: never), and the model gets a DDPM timestep in [round(1000 t_enc / n), round(1000 (t_enc + 1) / n))."""
    c = 1000 // n_steps
    run, last_timestep = 0, None
    for index in reversed(range(n_steps)):
        run += 1
        last_timestep = c * (index - 1) + 1 if index > 0 else 0  # where the step leaves the latent
        if index + 1 == t_enc:
            break
    return run, last_timestep, (round(t_enc / n_steps * 1000), round((t_enc + 1) / n_steps * 1000))


@pytest.mark.parametrize("t_enc", [0, 1, 2, 17, 49])
def test_release_pairing_rule(t_enc):
    run, latent_t, interval = paper_era_pairing(t_enc)
    assert esd.release_pairing(t_enc, 50) == (run, interval)
    if t_enc >= 2:  # the model's timestep is 39 to 58 timesteps noisier than the latent it is given
        assert interval[0] - latent_t == 39 and interval[1] - 1 - latent_t == 58


@pytest.mark.parametrize("pairing", ["matched", "release"])
def test_esd_step_pairing_of_latent_and_timestep(pipe, monkeypatch, pairing):
    """The step denoises to the rule's step and predicts at the rule's timestep (same draws as the test)."""
    n = 10
    cfg = esd.ESDConfig(n_steps=n, pairing=pairing, progress=False)
    trainer = Trainer(pipe.unet, "cross_attn", iterations=1, progress=False)
    step = esd.ESDStep(pipe, trainer, esd.ConceptSpec(name="cat", kind="object", targets=["cat"]), cfg)
    seen = {}
    monkeypatch.setattr(step.sampler, "denoise", lambda unet, z, a, b, *rest: (seen.setdefault("until", b), z)[1])
    real = esd.predict
    monkeypatch.setattr(esd, "predict", lambda unet, z, t, cond: seen.setdefault("t", int(t)) * 0 + real(unet, z, t, cond))
    for seed in range(6):
        seen.clear()
        step(0, step_generator(seed, 1))
        g = step_generator(seed, 1)
        esd.randint(1, g)  # the prompt pick
        t_enc = esd.randint(n, g)
        if pairing == "matched":
            assert (seen["until"], seen["t"]) == (t_enc, step.sampler.timestep(t_enc))
        else:
            run, _, (lo, hi) = paper_era_pairing(t_enc, n)
            assert seen["until"] == run and seen["t"] == lo + esd.randint(hi - lo, g)
