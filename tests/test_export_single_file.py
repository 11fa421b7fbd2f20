"""`--format single-file`: one .safetensors in the original LDM/SGM layout that diffusers' `from_single_file`
(with the base model's folder as config) loads back to the erased pipeline's weights, bit for bit."""

import pytest
import torch
from safetensors import safe_open

from erasekit.concepts.packs import get_concept
from erasekit.export.run import export_model
from erasekit.methods.base import get_method
from erasekit.models.delta import apply_delta, revert_delta
from erasekit.models.loading import checkpoint_family
from erasekit.models.tiny import TINY_SDXL_TEXT_CONFIG_2, TINY_TEXT_CONFIG, tiny_pipeline

# tiny pipelines run fastest on one thread (two crawl on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def family_pipeline(family):
    """A tiny pipeline; for SDXL with text encoders of different widths (24 + 40 = the UNet's 64), as in real
    SDXL, where diffusers tells the two encoders of a single file apart by their width."""
    pipe = tiny_pipeline(family)
    if family == "sdxl":
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        torch.manual_seed(3)
        pipe.register_modules(
            text_encoder=CLIPTextModel(CLIPTextConfig(**{**TINY_TEXT_CONFIG, "hidden_size": 24})).eval(),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**{**TINY_SDXL_TEXT_CONFIG_2, "hidden_size": 40})).eval())
    return pipe


def states(pipe):
    return {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()}
            for c in COMPONENTS if getattr(pipe, c, None) is not None}


# sd2 (OpenCLIP text layout) and sdxl (two encoders) take 4-6 s each; sd1 stays in `make test-fast`
@pytest.mark.parametrize("family", ["sd1", pytest.param("sd2", marks=pytest.mark.slow),
                                    pytest.param("sdxl", marks=pytest.mark.slow)])
def test_from_single_file_loads_the_erased_weights_back(family, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipe = family_pipeline(family)
    pipe.save_pretrained(str(tmp_path / "base"))
    info = get_method("uce")
    delta = info.erase(pipe, get_concept("circle"), info.config_cls.preset("sd"))
    base = states(pipe)
    apply_delta(pipe, delta)
    erased = states(pipe)
    revert_delta(pipe, delta)
    export_model(pipe, delta, tmp_path / "erased", "single-file")
    path = tmp_path / "erased" / "erased.safetensors"
    assert states(pipe).keys() == base.keys()
    assert all(torch.equal(states(pipe)[c][k], base[c][k]) for c in base for k in base[c])  # pipe untouched
    assert checkpoint_family(path) == family  # erasekit's own reader recognises the layout
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    back = cls.from_single_file(str(path), config=str(tmp_path / "base"))
    loaded = states(back)
    assert loaded.keys() == erased.keys()
    for c in erased:
        assert loaded[c].keys() == erased[c].keys()
        assert all(torch.equal(loaded[c][k], erased[c][k]) for k in erased[c]), c
    changed = [n for n in delta.names if not torch.equal(erased["unet"][n[5:]], base["unet"][n[5:]])]
    assert changed  # the file carries the erasure, not the base


def test_dtype_cast_and_original_prefixes(tmp_path):
    pipe = tiny_pipeline("sd1")
    info = get_method("uce")
    delta = info.erase(pipe, get_concept("circle"), info.config_cls.preset("sd"))
    export_model(pipe, delta, tmp_path / "half.safetensors", "single-file", dtype="fp16")
    with safe_open(str(tmp_path / "half.safetensors" / "half.safetensors"), framework="pt") as fh:
        keys = list(fh.keys())
        assert {fh.get_tensor(k).dtype for k in keys if fh.get_tensor(k).is_floating_point()} == {torch.float16}
    assert {k.split(".")[0] for k in keys} == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
