"""`--format lora`: loaded by plain diffusers `load_lora_weights`, the LoRA reproduces `apply_delta`'s images
(same seeds, <= 1/255) on the Shapes model and tiny SD-1/SD-2/SDXL pipelines; partial strength; --rank."""

import numpy as np
import pytest
import torch

from erasekit.concepts.packs import get_concept
from erasekit.export import ExportError
from erasekit.export.lora import WEIGHTS_FILE, lora_factors
from erasekit.export.run import export_model
from erasekit.generation import SamplingSettings, generate
from erasekit.methods.base import get_method
from erasekit.models.delta import WeightDelta, apply_delta, resolve_tensors, revert_delta, snapshot
from erasekit.models.tiny import tiny_pipeline

# tiny pipelines run fastest on one thread (two crawl on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red circle", "a blue square on a green background"]
SEEDS = [0, 1]


def uce_delta(pipe, preset):
    info = get_method("uce")
    return info.erase(pipe, get_concept("circle"), info.config_cls.preset(preset))


def images(pipe, settings):
    return np.stack([np.asarray(im, dtype=np.int16) for im in generate(pipe, PROMPTS, SEEDS, settings)])


def erased_images(pipe, delta, settings):
    apply_delta(pipe, delta)
    try:
        return images(pipe, settings)
    finally:
        revert_delta(pipe, delta)


def test_shapes_lora_reproduces_apply_delta_images(shapes_pipe, tmp_path):
    from erasekit.models.loading import load_pipeline

    delta = uce_delta(shapes_pipe, "shapes")
    settings = SamplingSettings(steps=6, guidance_scale=3.0)
    expected = erased_images(shapes_pipe, delta, settings)
    result = export_model(shapes_pipe, delta, tmp_path / "lora", "lora", base_model="shapes")
    assert (tmp_path / "lora" / WEIGHTS_FILE).is_file() and (tmp_path / "lora" / "README.md").is_file()
    assert "relative reconstruction error" in result.notes[0]
    fresh = load_pipeline("shapes")
    original = images(fresh, settings)
    fresh.load_lora_weights(str(tmp_path / "lora"))  # plain diffusers, folder only
    got = images(fresh, settings)
    assert np.abs(got - expected).max() <= 1
    assert np.abs(original - expected).max() > 10  # the erasure changes the images


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_lora_reproduces_apply_delta_images(family, tmp_path):
    pipe = tiny_pipeline(family)
    delta = uce_delta(pipe, "sd")
    settings = SamplingSettings(steps=3, guidance_scale=5.0, height=16, width=16)
    expected = erased_images(pipe, delta, settings)
    export_model(pipe, delta, tmp_path / "lora", "lora")
    fresh = tiny_pipeline(family)
    fresh.load_lora_weights(str(tmp_path / "lora"))
    got = images(fresh, settings)
    assert np.abs(got - expected).max() <= 1
    fresh.fuse_lora()
    fresh.unload_lora_weights()
    fused = resolve_tensors(fresh, delta.names)
    assert max(float((fused[n] - delta.tensors[n]).abs().max()) for n in delta.names) < 1e-5


def test_adapter_weight_gives_partial_strength(tmp_path):
    pipe = tiny_pipeline("sd1")
    delta = uce_delta(pipe, "sd")
    base = snapshot(pipe, delta.names)
    export_model(pipe, delta, tmp_path / "lora", "lora")
    fresh = tiny_pipeline("sd1")
    fresh.load_lora_weights(str(tmp_path / "lora"), adapter_name="erased")
    fresh.set_adapters(["erased"], adapter_weights=[0.5])
    fresh.fuse_lora(adapter_names=["erased"])
    fresh.unload_lora_weights()
    fused = resolve_tensors(fresh, delta.names)
    for n in delta.names:
        half = base[n] + 0.5 * (delta.tensors[n] - base[n])
        assert torch.allclose(fused[n], half, atol=1e-5)
        assert not torch.allclose(fused[n], delta.tensors[n], atol=1e-4)


def test_rank_cap_reports_the_truncation_error(tmp_path):
    pipe = tiny_pipeline("sd1")
    delta = uce_delta(pipe, "sd")
    exact = lora_factors(pipe, delta)
    base = snapshot(pipe, delta.names)
    eps = torch.finfo(torch.float32).eps
    for n in delta.names:  # exact: what is dropped is below what float32 storage of the new weight resolves
        diff = (delta.tensors[n] - base[n]).double()
        a, b = exact.factors[n.removesuffix(".weight")]
        assert float((diff - b.double() @ a.double()).norm()) <= 2 * eps * float(delta.tensors[n].double().norm())
    capped = lora_factors(pipe, delta, rank=2)
    assert max(capped.ranks.values()) <= 2
    tail = norm = 0.0
    for n in delta.names:  # the best rank-2 approximation leaves the singular values past the second
        s = torch.linalg.svdvals((delta.tensors[n] - base[n]).double())
        tail += float((s[2:] ** 2).sum())
        norm += float((s ** 2).sum())
    assert capped.relative_error == pytest.approx((tail / norm) ** 0.5, rel=1e-6)
    assert capped.relative_error > 1e-3
    result = export_model(pipe, delta, tmp_path / "small", "lora", rank=2)
    assert f"{capped.relative_error:.2e}" in result.notes[0]


def test_changes_a_lora_cannot_carry_are_refused(tmp_path):
    pipe = tiny_pipeline("sd1")
    name = next(f"unet.{k}" for k, _ in pipe.unet.named_parameters() if k.endswith("attn2.to_out.0.bias"))
    before = snapshot(pipe, [name])
    with torch.no_grad():
        resolve_tensors(pipe, [name])[name].add_(0.1)
    delta = WeightDelta.from_changes(pipe, before, method="test")
    revert_delta(pipe, delta)
    with pytest.raises(ExportError, match="Linear/Conv weights only"):
        export_model(pipe, delta, tmp_path / "lora", "lora")
    assert not (tmp_path / "lora").exists()
