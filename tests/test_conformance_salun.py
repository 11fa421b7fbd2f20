"""SalUn's SD preset conforms to the authors' release (OPTML-Group/Unlearn-Saliency, SD/), on tiny SD-1.

References written here from the release's rules:

- mask (``generate_mask.py``): g = sum over the forget set of the gradient, at the original weights, of
  MSE((1 + w) eps(x_t, c) - w eps(x_t, ""), eps), w = 7.5, t uniform, fresh noise eps; the entries whose
  |g| ranks in the top half over every UNet parameter (rank < int(N / 2));
- loss (``random_label.py``, ``nsfw_removal.py``): MSE(eps*(x_t, c), sg[eps*(x_t, c_pseudo)]) with the model
  being trained, plus alpha (0.5) times the diffusion loss on a retain sample.
"""

import pytest
import torch
import torch.nn.functional as F

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.trust import SalUnConfig, SalUnPlusPlusConfig
from erasekit.methods.trust.salun import SalUnStep, step_class
from erasekit.methods.trust.step import TrustStep
from erasekit.training import Trainer, randint, step_generator

pytestmark = pytest.mark.usefixtures("one_thread")

CONCEPT = ConceptSpec(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog",
                      templates=["a photo of {}"], preserve=["a photo of a house"])


def _encode(pipe, prompts):
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(tok.input_ids)[0]


def _step(pipe, **kw):
    cfg = SalUnConfig(pool_size=3, saliency_samples=3, retain_pool_size=2, n_steps=2, progress=False, **kw)
    trainer = Trainer(pipe.unet, cfg.scope, iterations=1, progress=False)
    return SalUnStep(pipe, trainer, CONCEPT, cfg, scorer=None), trainer


def release_mask(pipe, pool, prompts, g, w=7.5):
    """generate_mask.py's saliency on the pool (each latent once, in order) and its global top 50%."""
    unet, acp = pipe.unet, pipe.scheduler.alphas_cumprod
    params = dict(unet.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    uncond = _encode(pipe, [""])
    for j in range(len(pool.index)):
        t = randint(1000, g)
        x0 = pool.latents[j : j + 1]
        noise = torch.randn(x0.shape, generator=g)
        x_t = acp[t].sqrt() * x0 + (1 - acp[t]).sqrt() * noise
        cond = _encode(pipe, [prompts[pool.index[j]]])
        out = unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=torch.cat([cond, uncond])).sample
        e_c, e_u = out.chunk(2)
        loss = -F.mse_loss((1 + w) * e_c - w * e_u, noise)  # the release's sign; |g| is the same
        for n, gr in zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)):
            if gr is not None:
                grads[n] += gr
    flat = -torch.cat([v.abs().flatten() for v in grads.values()])
    ranks = torch.argsort(torch.argsort(flat))
    keep, out, i = ranks < int(len(flat) * 0.5), {}, 0
    for n, v in grads.items():
        out[n] = keep[i : i + v.numel()].reshape(v.shape)
        i += v.numel()
    return out


def test_sd_mask_is_the_releases(pipe):
    step, _ = _step(pipe)
    masks = step.recompute_masks(0, step_generator(0, 1))
    want = release_mask(pipe, step.pool, step.prompts, step_generator(0, 1))
    assert set(masks) == set(want) == {n for n, _ in pipe.unet.named_parameters()}  # every UNet parameter
    total = sum(m.numel() for m in want.values())
    assert sum(int(m.sum()) for m in masks.values()) == total // 2
    assert all(torch.equal(masks[n], want[n]) for n in want)


def test_sd_loss_is_the_releases(pipe, monkeypatch):
    """Forgetting loss against the current model's anchor prediction, plus 0.5 x the retain diffusion loss."""
    step, trainer = _step(pipe)
    with torch.no_grad():  # move the trained weights off the original, so current != original
        for p in trainer.params.values():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    step.masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in trainer.params.items()}
    g = step_generator(3, 1)
    try:
        loss = step(1, g)
        # replay the step's draws: forget sample, then a retain sample with its noise
        g = step_generator(3, 1)
        z, t, i = step.pool.draw(g)
        k = randint(len(step.retain_pool.index), g)
        tr = randint(1000, g)
        x0 = step.retain_pool.latents[k : k + 1]
        noise = torch.randn(x0.shape, generator=g)
        acp = pipe.scheduler.alphas_cumprod
        zr = acp[tr].sqrt() * x0 + (1 - acp[tr]).sqrt() * noise
        unet = pipe.unet
        with torch.no_grad():
            pseudo = unet(z, t, encoder_hidden_states=_encode(pipe, [step.anchors[i]])).sample
            out = unet(z, t, encoder_hidden_states=_encode(pipe, [step.prompts[i]])).sample
            retain = unet(zr, tr, encoder_hidden_states=_encode(pipe, [step.retain[step.retain_pool.index[k]]])).sample
        want = F.mse_loss(out, pseudo) + 0.5 * F.mse_loss(retain, noise)
        assert torch.allclose(loss.detach(), want, rtol=1e-4)
    finally:
        with torch.no_grad():
            for n, p in trainer.params.items():
                p.copy_(trainer.originals[n])


def test_release_settings_one_setting_away():
    sd, shapes = SalUnConfig(), SalUnConfig.preset("shapes")
    assert (sd.scope, sd.topk, sd.mask_granularity, sd.saliency_loss, sd.pseudo_target, sd.retain_target,
            sd.retain_preserve, sd.gamma) == ("all", 0.5, "global", "diffusion", "current", "noise", True, 0.5)
    assert (shapes.scope, shapes.topk, shapes.mask_granularity, shapes.saliency_loss, shapes.pseudo_target,
            shapes.retain_target, shapes.retain_preserve) == (None, None, "tensor", "forget", "original",
                                                             "original", False)
    assert step_class(sd) is SalUnStep and step_class(shapes) is TrustStep
    assert step_class(SalUnPlusPlusConfig()) is TrustStep  # SalUn++ keeps erasekit's SalUn
    assert "pseudo_target" not in shapes.fingerprint() and "pseudo_target" in sd.fingerprint()
    with pytest.raises(ValueError, match="regulariser"):
        SalUnStep(None, None, CONCEPT, SalUnConfig(regularizer="cip"), None)
