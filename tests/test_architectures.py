"""Every erasure method on every architecture: SD-1.x, SD-2.x (v-prediction) and SDXL tiny pipelines.

Per (method, family): the delta is non-empty, stays inside the method's parameter
scope, every tensor it names really changed, it applies exactly, and reverting
it restores the whole pipeline bit for bit.  Further tests pin the SDXL
conditioning (pooled text, time ids, zeroed empty prompt, first-[EoT] rows of
both encoders) and the v-prediction equivalences.
"""

import gc
import warnings

import pytest
import torch

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method, list_methods
from erasekit.methods.losses import esd_target
from erasekit.methods.preservation import prompt_rows
from erasekit.models.conditioning import TextCondition, cat_conditions, encode_conditions
from erasekit.models.ddim import DDIMSampler
from erasekit.models.delta import apply_delta, bitwise_equal, revert_delta, snapshot
from erasekit.models.scopes import get_scope
from erasekit.models.text import first_eot_positions
from erasekit.models.tiny import FAMILIES, tiny_pipeline
from erasekit.models.unet_io import initial_latents, predict

CONCEPT = ConceptSpec(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog",
                      templates=["a photo of {}", "{} in a garden"], preserve=["a photo of a house", "a red car"])

FAST = dict(progress=False, lr=1e-3)
# Tiny settings per method (MethodConfig overrides): a few iterations, 4 DDIM steps, small pools; TRCE
# stage 2 gets a wide margin so its hinge is active on random weights (else the loss can be exactly 0).
TINY_CONFIGS = {
    "uce": dict(),
    "trce-t": dict(n_general=12),
    "trce-v": dict(**FAST, iterations=2, margin=10.0, n_trajectories=2, n_uncond=2, n_steps=4, max_step=1, sample_batch=2),
    "trce": dict(**FAST, iterations=2, margin=10.0, n_trajectories=2, n_uncond=2, n_steps=4, max_step=1, sample_batch=2,
                 n_general=12),
    "esd-x": dict(**FAST, iterations=2, n_steps=4),
    "esd-u": dict(**FAST, iterations=2, n_steps=4),
    "kscu": dict(**FAST, iterations=2, n_steps=4),
    "trust": dict(**FAST, iterations=2, n_steps=4, pool_size=2, retain_pool_size=2, scorer="forget"),
    "salun": dict(**FAST, iterations=2, n_steps=4, pool_size=2, retain_pool_size=2, saliency_samples=2),
    "salun++": dict(**FAST, iterations=2, n_steps=4, pool_size=2, retain_pool_size=2, saliency_samples=2),
    "trust-kv": dict(**FAST, iterations=2, n_steps=4, pool_size=2, retain_pool_size=2),
}
# The scope each method may change on an "object" concept.
INTENDED_SCOPES = {
    "uce": ["cross_attn_kv"], "trce-t": ["cross_attn_kv"], "trce-v": ["visual"], "trce": ["cross_attn_kv", "visual"],
    "esd-x": ["cross_attn"], "esd-u": ["non_cross_attn_paper"], "kscu": ["non_cross_attn"],
    "trust": ["cross_attn_qkv"], "salun": ["all"], "salun++": ["cross_attn_qkv"],
    "trust-kv": ["cross_attn_kv"],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=FAMILIES)
def family_pipe(request):
    return request.param, tiny_pipeline(request.param)


def _all_tensors(pipe) -> dict[str, torch.Tensor]:
    names = []
    for comp in ("unet", "text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, comp, None)
        if module is not None:
            names += [f"{comp}.{n}" for n in {**dict(module.named_parameters()), **dict(module.named_buffers())}]
    return snapshot(pipe, names)


def test_matrix_covers_every_registered_method():
    assert set(TINY_CONFIGS) == set(list_methods()) == set(INTENDED_SCOPES)


@pytest.mark.parametrize("method", sorted(TINY_CONFIGS))
def test_method_on_family(family_pipe, method):
    family, pipe = family_pipe
    info = get_method(method)
    before = _all_tensors(pipe)
    delta = info.erase(pipe, CONCEPT, info.config_cls(**TINY_CONFIGS[method]))

    # the method left the pipeline as it found it
    assert all(bitwise_equal(before[n], t) for n, t in _all_tensors(pipe).items())
    # non-empty, inside the intended scope, and every named tensor really changed
    allowed = set().union(*(get_scope(s).select(pipe.unet, prefix="unet.") for s in INTENDED_SCOPES[method]))
    assert delta.names, f"{method} on {family} changed nothing"
    assert set(delta.names) <= allowed, sorted(set(delta.names) - allowed)[:3]
    assert all(not torch.equal(delta.tensors[n], before[n]) for n in delta.names)
    assert torch.isfinite(torch.cat([t.flatten().float() for t in delta.tensors.values()])).all()
    # applies exactly, reverts bit for bit
    apply_delta(pipe, delta)
    try:
        applied = _all_tensors(pipe)
        for n, t in applied.items():
            expected = delta.tensors[n] if n in delta.tensors else before[n]
            assert bitwise_equal(t, expected), n
    finally:
        revert_delta(pipe, delta)
    assert all(bitwise_equal(before[n], t) for n, t in _all_tensors(pipe).items())


# ------------------------------------------------------------------ what each family's UNet reads
@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_reproduces_the_pipelines_own_denoising(family):
    """Our DDIM + CFG loop (used for partial generations and trajectories) equals the pipeline's sampling:
    same text conditioning, SDXL added conditions and zeroed negative prompt, and the
    scheduler's own epsilon / v-prediction handling."""
    pipe = tiny_pipeline(family, seed=3)
    z = initial_latents(pipe.unet, torch.Generator().manual_seed(0))
    cond, uncond = encode_conditions(pipe, ["a photo of a cat"]), encode_conditions(pipe, [""])
    ours = DDIMSampler(pipe.scheduler, 4).denoise(pipe.unet, z, 0, 4, cond, uncond, guidance=3.0)
    theirs = pipe("a photo of a cat", num_inference_steps=4, guidance_scale=3.0, latents=z.clone(),
                  output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_sdxl_condition_carries_pooled_text_time_ids_and_zero_empty_prompt():
    pipe = tiny_pipeline("sdxl")
    cond = encode_conditions(pipe, ["", "a cat"])
    assert cond.embeds.shape == (2, 77, 64) and cond.pooled.shape == (2, 32)
    assert cond.time_ids.tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]] * 2
    assert not cond.embeds[0].any() and not cond.pooled[0].any()  # SDXL's unconditional branch is zeros
    assert cond.embeds[1].abs().sum() > 0 and cond.pooled[1].abs().sum() > 0
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="added conditions"):
        predict(pipe.unet, z, 10, cond.embeds[1:])
    # the pooled embedding conditions the output: change it and the prediction changes
    out = predict(pipe.unet, z, 10, cond[1:])
    other = TextCondition(cond.embeds[1:], cond.pooled[1:] + 1.0, cond.time_ids[1:])
    assert not torch.allclose(out, predict(pipe.unet, z, 10, other))
    both = cat_conditions([cond[1:], cond[:1]])
    assert len(both) == 2 and torch.equal(both.pooled[1], cond.pooled[0])


@torch.no_grad()
def test_sdxl_eot_row_is_both_encoders_concatenated():
    pipe = tiny_pipeline("sdxl")
    prompts = ["a photo of a cat", "an astronaut riding a horse"]
    rows = prompt_rows(pipe, prompts, "eot")
    eot = first_eot_positions(pipe, prompts)
    parts = []
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        hidden = enc(ids, output_hidden_states=True).hidden_states[-2]  # SDXL reads the penultimate layer
        parts.append(hidden[torch.arange(len(prompts)), eot])
    torch.testing.assert_close(rows, torch.cat(parts, dim=-1))
    # tokenizer_2 pads with '!' (as SDXL's does), yet the first [EoT] is at the same place
    assert pipe.tokenizer_2.pad_token_id != pipe.tokenizer.pad_token_id


def test_misaligned_tokenizers_are_refused():
    pipe = tiny_pipeline("sdxl")
    pipe.tokenizer_2.model_max_length = 6  # truncates long prompts: their [EoT] moves
    with pytest.raises(ValueError, match="different positions"):
        first_eot_positions(pipe, ["a photo of a cat sitting on a very long red sofa"])


def test_v_prediction_targets_are_the_epsilon_targets_in_v_units():
    """All loss targets are affine combinations with weights summing to one, so on a v-prediction
    model (SD-2.x) the target built from v outputs is exactly the v of the epsilon-space target."""
    pipe = tiny_pipeline("sd2")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    sampler = DDIMSampler(pipe.scheduler, 4)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = sampler.timestep(1)
    a = sampler.scheduler.alphas_cumprod[t]
    cond, uncond = encode_conditions(pipe, ["a cat"]), encode_conditions(pipe, [""])
    with torch.no_grad():
        v_c, v_u = predict(pipe.unet, torch.cat([z, z]), t, cat_conditions([cond, uncond])).double().chunk(2)
    zd = z.double()
    to_eps = lambda v: a.sqrt() * v + (1 - a).sqrt() * zd  # noqa: E731
    to_v = lambda e: (e - (1 - a).sqrt() * zd) / a.sqrt()  # noqa: E731
    torch.testing.assert_close(esd_target(v_c, v_u, 1.0), to_v(esd_target(to_eps(v_c), to_eps(v_u), 1.0)))


# ------------------------------------------------------------------ memory
def _copies_of(tensor: torch.Tensor, candidates: list[torch.Tensor]) -> int:
    ptr = tensor.untyped_storage().data_ptr()
    seen, n = {ptr}, 0
    for c in candidates:
        p = c.untyped_storage().data_ptr()
        if p in seen or c.shape != tensor.shape or c.dtype != tensor.dtype:
            continue
        seen.add(p)
        n += bool(torch.equal(c, tensor))
    return n


@pytest.mark.parametrize("family,method,scope", [("sd1", "esd-u", "non_cross_attn_paper"), ("sdxl", "trce", "visual")])
def test_fine_tuning_keeps_one_reference_copy_of_the_scope(family, method, scope, monkeypatch):
    """During training, each trained tensor has exactly one extra copy (the frozen reference, shared with
    the edit session's snapshot) and no frozen UNet tensor is copied at all (no second UNet)."""
    gc.collect()
    pipe = tiny_pipeline(family, seed=11)  # weights no other test's pipeline shares
    trained = get_scope(scope).select(pipe.unet)
    found: dict[str, int] = {}

    def count_copies(module, args):
        if found or not torch.is_grad_enabled():
            return
        with warnings.catch_warnings():  # isinstance() on some torch module objects warns
            warnings.simplefilter("ignore")
            live = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and not o.is_meta]
        for n, p in pipe.unet.named_parameters():
            found[n] = _copies_of(p.detach(), live)

    handle = pipe.unet.register_forward_pre_hook(count_copies)
    try:
        info = get_method(method)
        info.erase(pipe, CONCEPT, info.config_cls(**{**TINY_CONFIGS[method], "iterations": 1}))
    finally:
        handle.remove()
    # compare randomly initialised matrices/kernels only: norm weights (ones) and biases (zeros)
    # equal one another by value, so value equality would not mean "a copy" for them
    random = {n for n, p in pipe.unet.named_parameters() if p.dim() > 1}
    frozen = [n for n in found if n in random and n not in trained]
    assert frozen and all(found[n] == 0 for n in frozen), [n for n in frozen if found[n]][:3]
    weights = [n for n in trained if n in random]
    assert weights and all(found[n] == 1 for n in weights), {n: found[n] for n in weights if found[n] != 1}


def test_gradient_checkpointing_gives_the_same_delta():
    pipe = tiny_pipeline("sdxl")
    info = get_method("esd-x")
    plain = info.erase(pipe, CONCEPT, info.config_cls(**TINY_CONFIGS["esd-x"]))
    checkpointed = info.erase(pipe, CONCEPT, info.config_cls(**TINY_CONFIGS["esd-x"], gradient_checkpointing=True))
    assert not pipe.unet.is_gradient_checkpointing  # switched off again after the run
    for n in plain.names:
        torch.testing.assert_close(checkpointed.tensors[n], plain.tensors[n], rtol=1e-5, atol=1e-7)


def test_trust_csr_under_gradient_checkpointing_gives_the_same_delta():
    # CSR differentiates the UNet's gradient: with checkpointing the backward recomputes the forward, and
    # the recomputation must use the attention kernel the forward used (the math kernel for the whole run)
    pipe = tiny_pipeline("sd1")
    info = get_method("trust")
    config = {**TINY_CONFIGS["trust"], "regularizer": "csr"}
    plain = info.erase(pipe, CONCEPT, info.config_cls(**config))
    checkpointed = info.erase(pipe, CONCEPT, info.config_cls(**config, gradient_checkpointing=True))
    assert not pipe.unet.is_gradient_checkpointing
    assert plain.names == checkpointed.names
    for n in plain.names:
        torch.testing.assert_close(checkpointed.tensors[n], plain.tensors[n], rtol=1e-4, atol=1e-6)


def test_adam8bit_falls_back_with_a_note_on_cpu(caplog):
    pipe = tiny_pipeline("sd1")
    info = get_method("esd-x")
    with caplog.at_level("WARNING"):
        delta = info.erase(pipe, CONCEPT, info.config_cls(**TINY_CONFIGS["esd-x"], optimizer="adam8bit"))
    assert "adam8bit" in caplog.text and delta.manifest.metrics["optimizer"] == "adam"
    with pytest.raises(ValueError, match="8-bit"):
        get_method("trust").erase(pipe, CONCEPT, get_method("trust").config_cls(**TINY_CONFIGS["trust"],
                                                                                 optimizer="adam8bit"))

