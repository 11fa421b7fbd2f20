"""Model families: detection on saved-and-reloaded tiny pipelines, single-file checks, clear refusals."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from erasekit.models.loading import (ModelNotFoundError, UnsupportedModelError, checkpoint_family, detect_family,
                                     load_pipeline)
from erasekit.models.tiny import FAMILIES, tiny_pipeline

# tiny pipelines run fastest on one thread (two crawl on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:
        tiny_pipeline(family).save_pretrained(str(root / family))
    return root


@pytest.mark.parametrize("family", FAMILIES)
def test_family_of_reloaded_pipeline(saved, family):
    pipe = load_pipeline(str(saved / family))
    assert detect_family(pipe) == family
    assert type(pipe).__name__ == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    expected_prediction = "v_prediction" if family == "sd2" else "epsilon"
    assert pipe.scheduler.config.prediction_type == expected_prediction


def test_dtype_option_and_family_mismatch(saved):
    pipe = load_pipeline(str(saved / "sd2"), dtype="bf16")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    with pytest.raises(UnsupportedModelError, match="given as family 'sdxl' but is a sd2"):
        load_pipeline(str(saved / "sd2"), family="sdxl")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_pipeline(str(saved / "sd1"), dtype="int8")


def test_sd2_signs_beat_the_prediction_type():
    """An epsilon SD-2.x (like SD-2 base 512) is still SD-2.x; a v-prediction SD-1.x layout stays SD-1.x."""
    assert detect_family(tiny_pipeline("sd2", prediction_type="epsilon")) == "sd2"
    assert detect_family(tiny_pipeline("sd1", prediction_type="v_prediction")) == "sd1"


def test_unsupported_pipelines_are_one_line_errors():
    flux_like = SimpleNamespace(transformer=torch.nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError) as err:
        detect_family(flux_like)
    assert "transformer-based" in str(err.value) and "\n" not in str(err.value)
    pipe = tiny_pipeline("sdxl")
    pipe.text_encoder_2 = None  # a refiner-like pipeline
    with pytest.raises(UnsupportedModelError, match="second text encoder"):
        detect_family(pipe)


def _checkpoint(path, names):
    save_file({n: torch.zeros(1) for n in names}, str(path))
    return path


def test_checkpoint_family_from_tensor_names(tmp_path):
    sd1 = _checkpoint(tmp_path / "sd1.safetensors", ["model.diffusion_model.input_blocks.0.0.weight",
                                                      "cond_stage_model.transformer.text_model.embeddings.x"])
    sd2 = _checkpoint(tmp_path / "sd2.safetensors", ["model.diffusion_model.input_blocks.0.0.weight",
                                                      "cond_stage_model.model.transformer.resblocks.0.x"])
    xl = _checkpoint(tmp_path / "xl.safetensors", ["model.diffusion_model.input_blocks.0.0.weight",
                                                    "conditioner.embedders.1.model.text_projection"])
    sd3 = _checkpoint(tmp_path / "sd3.safetensors", ["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"])
    assert [checkpoint_family(p) for p in (sd1, sd2, xl)] == ["sd1", "sd2", "sdxl"]
    with pytest.raises(UnsupportedModelError, match="SD3/Flux"):
        checkpoint_family(sd3)
    with pytest.raises(UnsupportedModelError, match="SD3/Flux"):
        load_pipeline(str(sd3))


def test_pickled_single_files_are_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not read")
    with pytest.raises(ModelNotFoundError, match="only .safetensors"):
        load_pipeline(str(ckpt))
