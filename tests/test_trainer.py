"""The shared fine-tuning trainer: exact resume, NaN guard, scope freezing, reference weights."""

import hashlib

import pytest
import torch

from erasekit.concepts.spec import ConceptSpec
from erasekit.models.ddim import partial_denoise
from erasekit.models.delta import snapshot
from erasekit.models.text import encode_prompts
from erasekit.models.unet_io import predict
from erasekit.training import (FineTuneConfig, NonFiniteLossError, Trainer, fine_tune, list_checkpoints,
                               reference_weights)
from erasekit.training.optim import lr_factor

CONCEPT = ConceptSpec(name="cat", kind="object", targets=["cat"], anchor="dog")


class Interrupt(Exception):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")



def _make_step_fn(pipe, nan_at=None, interrupt_at=None, on_nan=None):
    emb = encode_prompts(pipe, ["a cat", ""])

    def make(trainer: Trainer):
        def step_fn(step, g):
            if interrupt_at is not None and step == interrupt_at:
                raise Interrupt
            z = torch.randn(1, 4, 8, 8, generator=g)
            t = int(torch.randint(1000, (1,), generator=g))
            with trainer.reference():
                target = -predict(pipe.unet, z, t, emb[1:])
            loss = torch.nn.functional.mse_loss(predict(pipe.unet, z, t, emb[:1]), target)
            if nan_at is not None and step == nan_at:
                if on_nan:
                    on_nan()
                return loss * float("nan")
            return loss

        return step_fn

    return make


def _all_tensors(pipe):
    names = [f"unet.{n}" for n, _ in pipe.unet.named_parameters()]
    names += [f"text_encoder.{n}" for n, _ in pipe.text_encoder.named_parameters()]
    return snapshot(pipe, names)


def _run(pipe, tmp, iterations=6, **kw):
    cfg = FineTuneConfig(**{"lr": 1e-3, "progress": False, "checkpoint_dir": str(tmp), "checkpoint_every": 2,
                            **{k: v for k, v in kw.items() if k in FineTuneConfig.model_fields}})
    make = _make_step_fn(pipe, **{k: v for k, v in kw.items() if k not in FineTuneConfig.model_fields})
    return fine_tune(pipe, CONCEPT, cfg, "test", "cross_attn", iterations, make)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_reaches_the_same_delta_as_an_uninterrupted_run(pipe, tmp_path, schedule):
    before = _all_tensors(pipe)
    full = _run(pipe, tmp_path / "a", lr_schedule=schedule)
    with pytest.raises(Interrupt):
        _run(pipe, tmp_path / "b", interrupt_at=5, lr_schedule=schedule)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2, 4]
    resumed = _run(pipe, tmp_path / "b", resume=True, lr_schedule=schedule)
    assert resumed.manifest.metrics["resumed_from"] == 4
    assert full.names and set(full.names) == set(resumed.names)
    for n in full.names:
        assert torch.equal(full.tensors[n], resumed.tensors[n]), n
    after = _all_tensors(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)
    # Only the scope changed and the pipeline's requires_grad flags are back.
    assert all(".attn2." in n for n in full.names)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(pipe, tmp_path):
    before = _all_tensors(pipe)
    seen = {}

    def record():  # the checkpoint files as they are when the NaN appears
        seen.update({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()})

    with pytest.raises(NonFiniteLossError) as err:
        _run(pipe, tmp_path, iterations=8, nan_at=5, on_nan=record)
    assert "step 5" in str(err.value) and "last good checkpoint" in str(err.value)
    assert err.value.checkpoint_step == 4
    ckpts = list_checkpoints(tmp_path)
    assert [s for s, _ in ckpts] == [2, 4] and max(s for s, _ in ckpts) < 5
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == seen
    after = _all_tensors(pipe)
    assert all(torch.equal(before[n], after[n]) for n in before)


def _files(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_a_huge_lr_diverges_keeps_a_finite_checkpoint_and_resume_new_lr_continues_it(pipe, tmp_path):
    from safetensors.torch import load_file

    from erasekit.training import CheckpointMismatchError

    before = _all_tensors(pipe)
    huge = dict(iterations=6, lr=300.0, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError) as err:
        _run(pipe, tmp_path, **huge)
    s = err.value.step  # Adam moves every weight by ~lr a step: a few steps blow the tiny UNet up
    assert 2 <= s < 6 and err.value.checkpoint_step == s - 1
    # the checkpoint of step s held the weights that gave the non-finite value: deleted; the older ones stay
    assert [k for k, _ in list_checkpoints(tmp_path)] == [s - 2, s - 1]
    assert f"step-{s:08d}.safetensors held the diverged weights" in str(err.value)
    assert "resume='new-lr'" in str(err.value) and "\n" not in str(err.value)
    kept = load_file(str(err.value.checkpoint))
    assert all(t.isfinite().all() for k, t in kept.items() if k.startswith("param/"))
    assert all(torch.equal(before[n], t) for n, t in _all_tensors(pipe).items())
    files = _files(tmp_path)
    # resume=True keeps the lr: the same steps diverge again, at the same step, nothing else changes
    with pytest.raises(NonFiniteLossError) as again:
        _run(pipe, tmp_path, resume=True, **huge)
    assert again.value.step == s and _files(tmp_path) == files
    # another lr is another run unless resume says otherwise: refused in one line, nothing touched
    with pytest.raises(CheckpointMismatchError, match="lr=300.0.*resume to 'new-lr'"):
        _run(pipe, tmp_path, iterations=6, checkpoint_every=1, lr=1e-3, resume=True)
    assert _files(tmp_path) == files
    # the first resumed step repeats the diverged run's last finite one (same weights, same draw), so it is
    # finite on any machine; later steps start from weights lr 300 left, which may overflow on some CPUs
    delta = _run(pipe, tmp_path, iterations=s, checkpoint_every=1, lr=1e-3, resume="new-lr")
    metrics = delta.manifest.metrics
    assert metrics["resumed_from"] == s - 1
    assert metrics["lr_history"] == [[0, 300.0, "constant"], [s - 1, 1e-3, "constant"]]
    assert all(t.isfinite().all() for t in delta.tensors.values()) and metrics["iterations"] == s
    assert [k for k, _ in list_checkpoints(tmp_path)] == [s - 1, s]


def test_non_finite_weights_are_never_checkpointed(pipe, tmp_path, monkeypatch):
    import erasekit.training.trainer as trainer_module

    real = trainer_module.make_optimizer

    def faulty(params, *args):  # an optimiser whose second step leaves an inf weight (finite loss, finite grads)
        opt, name = real(params, *args)
        step, calls = opt.step, []

        def broken_step(*a, **k):
            out = step(*a, **k)
            calls.append(1)
            if len(calls) == 2:
                with torch.no_grad():
                    params[0].view(-1)[0] = float("inf")
            return out

        opt.step = broken_step
        return opt, name

    monkeypatch.setattr(trainer_module, "make_optimizer", faulty)
    with pytest.raises(NonFiniteLossError, match="non-finite weights at step 2: training stopped;") as err:
        _run(pipe, tmp_path, iterations=4, checkpoint_every=1)
    assert err.value.checkpoint_step == 1 and [k for k, _ in list_checkpoints(tmp_path)] == [1]


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -1e-3, 1e39])
def test_an_lr_the_optimiser_cannot_use_is_refused(pipe, lr):
    with pytest.raises(ValueError, match="lr must be"):
        Trainer(pipe.unet, "cross_attn", iterations=1, lr=lr, progress=False)


def test_scope_freezing_and_reference_swap(pipe):
    unet = pipe.unet
    trainer = Trainer(unet, "cross_attn", iterations=0, progress=False)
    name, param = next(iter(trainer.params.items()))
    zeros = {name: torch.zeros_like(param)}
    with reference_weights(unet, zeros):
        assert torch.count_nonzero(dict(unet.named_parameters())[name]) == 0
        assert not torch.is_grad_enabled()
    assert torch.equal(dict(unet.named_parameters())[name], trainer.originals[name])
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    seen = {}

    def step_fn(step, g):
        seen.update({n: p.requires_grad for n, p in unet.named_parameters()})
        return sum(p.sum() for p in trainer.params.values()) * 0

    Trainer(unet, "cross_attn", iterations=1, progress=False).run(step_fn)
    assert {n for n, f in seen.items() if f} == set(trainer.params)
    assert {n: p.requires_grad for n, p in unet.named_parameters()} == flags


def test_partial_denoise_keeps_every_latent(pipe):
    emb = encode_prompts(pipe, ["a cat", ""])
    z0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    z, t, traj = partial_denoise(pipe.unet, pipe.scheduler, emb[:1], emb[1:], z0, 3, n_steps=10, keep_all=True)
    assert traj.shape == (2, 4, 4, 8, 8) and torch.equal(traj[:, 0], z0) and torch.equal(traj[:, -1], z)
    assert t == 1000 // 10 * (10 - 1 - 3) + 1  # DDIM with steps_offset=1
    z2, _ = partial_denoise(pipe.unet, pipe.scheduler, emb[:1], emb[1:], traj[:, 1], 3, n_steps=10, start_step=1)
    assert torch.allclose(z2, z, atol=1e-6)
    assert pipe.scheduler.num_inference_steps is None  # the pipeline's scheduler was not touched


def test_gradient_checkpointing_gives_the_same_result(pipe, tmp_path):
    plain = _run(pipe, tmp_path / "a", iterations=2)
    ckpt = _run(pipe, tmp_path / "b", iterations=2, gradient_checkpointing=True)
    assert set(plain.names) == set(ckpt.names)
    assert all(torch.allclose(plain.tensors[n], ckpt.tensors[n], atol=1e-6) for n in plain.names)
    assert not pipe.unet.is_gradient_checkpointing


def test_mixed_precision_needs_cuda(pipe):
    with pytest.raises(ValueError, match="CUDA"):
        Trainer(pipe.unet, "cross_attn", iterations=1, mixed_precision="bf16")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_scales_each_step_and_decays_to_near_zero(pipe, schedule):
    """A loss with a constant gradient makes every Adam step lr_k long, so the steps show the schedule."""
    lr, n = 1e-3, 8
    trainer = Trainer(pipe.unet, "cross_attn", iterations=n, lr=lr, lr_schedule=schedule, progress=False)
    name, param = next(iter(trainer.params.items()))
    history = [param.detach().clone()]

    def step_fn(step, g):
        if step:
            history.append(param.detach().clone())
        return param.sum()

    trainer.run(step_fn)
    history.append(param.detach().clone())
    moved = [float((a - b).abs().mean()) for a, b in zip(history, history[1:])]
    expected = [lr * lr_factor(schedule, k, n) for k in range(n)]
    assert moved == pytest.approx(expected, rel=1e-3)
    assert moved[-1] < 0.2 * moved[0]  # the last step is a fraction of the first: the run settles
    assert lr_factor("constant", n - 1, n) == 1.0


def test_an_unknown_lr_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        FineTuneConfig(lr_schedule="step")
