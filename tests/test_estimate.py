"""Memory/time estimates: work counts match UNet calls counted on tiny models; real parameter counts; the CLI."""

import pytest
import torch

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method
from erasekit.methods.estimate import estimate, method_work
from erasekit.models.cost import KNOWN_MODELS, model_spec, text_encoder_params, unet_cost, vae_params
from erasekit.models.tiny import tiny_pipeline

CONCEPT = ConceptSpec(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog",
                      templates=["a photo of {}", "{} in a garden"], preserve=["a photo of a horse"])
FAST = dict(progress=False, lr=1e-3)
COUNTED = {
    "kscu": dict(**FAST, iterations=9, n_steps=8, traversals_per_raise=1),
    "trce-v": dict(**FAST, iterations=3, n_trajectories=2, n_uncond=3, n_steps=4, max_step=1, sample_batch=2,
                   margin=10.0),
    "trust": dict(**FAST, iterations=3, n_steps=4, pool_size=3, scorer="forget"),
    "trust-fd": dict(**FAST, iterations=3, n_steps=4, pool_size=3, scorer="forget", csr_hessian="finite-difference"),
    "salun": dict(**FAST, iterations=3, n_steps=4, pool_size=3, saliency_samples=2),
    "trust-kv": dict(**FAST, iterations=3, n_steps=4, pool_size=3),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _count_unet_samples(pipe, run) -> tuple[int, int]:
    counts = [0, 0]  # no grad, grad

    def hook(module, args, kwargs):
        counts[int(torch.is_grad_enabled())] += args[0].shape[0] if args else kwargs["sample"].shape[0]

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return counts[0], counts[1]


@pytest.mark.parametrize("method", sorted(COUNTED))
def test_work_model_matches_counted_unet_calls(method):
    pipe = tiny_pipeline("sd1")
    name = method.removesuffix("-fd")  # trust-fd: trust with CSR's finite-difference Hessian-vector product
    info = get_method(name)
    cfg = info.config_cls(**COUNTED[method])
    nograd, grad = _count_unet_samples(pipe, lambda: info.erase(pipe, CONCEPT, cfg))
    work = method_work(name, cfg, kind="object")
    assert nograd == pytest.approx(work.setup_nograd + work.iterations * work.nograd_per_iter)
    assert grad == pytest.approx(work.setup_grad + work.iterations * work.grad_per_iter)
    assert work.train_batch * work.iterations <= grad + work.iterations * 3


@pytest.mark.slow
def test_esd_partial_generation_cost_on_average():
    pipe = tiny_pipeline("sd1")
    info = get_method("esd-x")
    cfg = info.config_cls(**FAST, iterations=40, n_steps=4)
    nograd, grad = _count_unet_samples(pipe, lambda: info.erase(pipe, CONCEPT, cfg))
    work = method_work("esd-x", cfg)
    assert grad == 40 and nograd == pytest.approx(40 * work.nograd_per_iter, rel=0.25)


@pytest.mark.slow
def test_real_parameter_counts_on_meta():
    sd15, sdxl = KNOWN_MODELS["sd15"], KNOWN_MODELS["sdxl"]
    assert unet_cost(sd15.unet, "cross_attn_kv").params == 859_520_964  # SD-1.5 UNet
    assert text_encoder_params(*sd15.text_encoders[0]) == 123_060_480  # CLIP ViT-L/14 text
    assert round(vae_params(sd15.vae) / 1e6, 1) == 83.7
    assert round(unet_cost(sdxl.unet, "cross_attn_kv").params / 1e9, 3) == 2.567  # SDXL base UNet


@pytest.mark.slow
def test_estimates_are_consistent_and_cheaper_settings_help():
    plain = estimate("esd-u", "sd15")
    lean = estimate("esd-u", "sd15", gradient_checkpointing=True, mixed_precision="bf16", optimizer="adam8bit")
    assert lean.peak_gib < plain.peak_gib and lean.memory_gib["activations"] < plain.memory_gib["activations"]
    assert lean.memory_gib["optimizer state"] == pytest.approx(plain.memory_gib["optimizer state"] / 4)
    assert estimate("esd-x", "sd15").peak_gib < plain.peak_gib  # smaller scope
    assert estimate("uce", "sdxl").train_seconds < 60


@pytest.mark.slow  # saves a tiny SDXL folder and counts the UNet's operations on the meta device: ~6 s
def test_dry_run_cli_prints_the_estimate_and_trains_nothing(tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli import app

    folder = tmp_path / "pipe"
    tiny_pipeline("sdxl").save_pretrained(str(folder))
    assert model_spec(str(folder)).family == "sdxl"
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["erase", "--model", str(folder), "--method", "esd-x", "--concept", "sd/church",
                                      "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "esd-x on" in result.output and "peak" in result.output and not out.exists()


@pytest.mark.slow  # the first --dry-run of a session counts the UNet on the meta device: ~7 s
def test_cli_refuses_a_preset_the_method_does_not_have(tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli import app

    folder = tmp_path / "pipe"
    tiny_pipeline("sd1").save_pretrained(str(folder))
    args = ["erase", "--model", str(folder), "--method", "esd-x", "--concept", "sd/church", "--out", str(tmp_path / "run"),
            "--dry-run", "--preset"]
    bad = CliRunner().invoke(app, [*args, "shapez"])
    assert bad.exit_code != 0 and "no preset 'shapez'" in bad.output and "shapes" in bad.output
    assert CliRunner().invoke(app, [*args, "shapes"]).exit_code == 0


def test_every_registered_method_carries_its_facts():
    """One MethodSpec per name: a config, a cost model on its own default scope, quick overrides its config accepts."""
    from erasekit.methods.base import list_methods

    for name in list_methods():
        spec = get_method(name)
        assert spec.name == name and spec.family in ("closed-form", "fine-tune")
        config = spec.config_cls(**spec.quick)  # the quick benchmark's overrides are valid settings
        for kind in ("object", "style"):
            work = method_work(name, config, kind)
            assert work.method == name and work.scope == spec.scope_for(config, kind)
            assert work.closed_form == (spec.family == "closed-form") == (not spec.seeded)
    assert get_method("kscu").scope_for(None, "style") != get_method("kscu").scope_for(None, "object")
    assert get_method("trce").unrecorded_scope() == "cross_attn_kv" and get_method("esd-x").unrecorded_scope() is None
