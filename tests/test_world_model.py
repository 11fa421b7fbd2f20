"""The shipped Shapes pipeline: SD-1.x conventions, plain diffusers loading, prompt adherence."""

import numpy as np
import pytest
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from erasekit.generation import SamplingSettings, generate
from erasekit.world.assets_paths import SHAPES_MODEL_DIR
from erasekit.world.dataset import render_dataset
from erasekit.world.vocabulary import ATTRIBUTES


def test_tokenizer_matches_sd1_conventions():
    tok = CLIPTokenizer.from_pretrained(SHAPES_MODEL_DIR / "tokenizer")
    assert len(tok) == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    # "a photo of" is [320, 1125, 539] in CLIP's vocabulary (the ids every SD-1.x prompt starts with)
    ids = tok("a photo of a red circle", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 1125, 539]
    first_eot = ids.index(49407)
    assert all(i == 49407 for i in ids[first_eot:]) and len(ids) == 77
    # byte-level BPE: unicode and emoji survive a round trip
    assert tok.decode(tok("café 🙂").input_ids, skip_special_tokens=True).strip() == "café 🙂"


def test_shipped_folder_loads_with_plain_diffusers():
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_MODEL_DIR, local_files_only=True)
    assert isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    n_cross = sum(1 for name, _ in pipe.unet.named_modules() if name.endswith("attn2"))
    assert n_cross >= 5
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae.config.latent_channels == 4 and pipe.unet.config.sample_size == 16


@pytest.mark.slow
def test_detector_reads_fresh_renders(detector):
    images, labels = render_dataset(600, seed=987654)
    probs = detector.probabilities(images)
    for k, attribute in enumerate(ATTRIBUTES):
        acc = (probs[attribute].argmax(1).numpy() == labels[:, k]).mean()
        assert acc >= 0.99, (attribute, acc)


@pytest.mark.slow
def test_generation_is_seeded(shapes_pipe):
    s = SamplingSettings(steps=10)
    a = generate(shapes_pipe, ["a red circle", "a blue star"], [1, 2], s)
    b = generate(shapes_pipe, ["a blue star"], [2], s)
    again = generate(shapes_pipe, ["a red circle", "a blue star"], [1, 2], s)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, again))
    # Alone or in a batch the image is the same up to float rounding in batched matmuls.
    diff = np.abs(np.asarray(a[1]).astype(int) - np.asarray(b[0]).astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.1, (diff.max(), diff.mean())
    assert a[0].size == (64, 64)


@pytest.mark.slow
def test_small_adherence_check(shapes_pipe, detector):
    """A broken model fails here: shape and colour must follow explicit prompts.

    The shipped model reads 0.97 shape / 0.98 colour on 64 explicit prompts (README,
    "Prompt adherence"); 24 prompts here, with room for sampling noise.
    """
    from erasekit.eval.probes import adherence_probes

    rows = adherence_probes("explicit", 24, seed=100)
    images = generate(shapes_pipe, [r.prompt for r in rows], [r.seed for r in rows], SamplingSettings.for_model(SHAPES_MODEL_DIR))
    pred = detector.predict(images)
    shape = np.mean([p == r.expected["shape"] for p, r in zip(pred["shape"], rows)])
    color = np.mean([p == r.expected["color"] for p, r in zip(pred["color"], rows)])
    assert color >= 0.85 and shape >= 0.85, (shape, color)


def test_empty_prompt_list_is_an_error(shapes_pipe):
    with pytest.raises(ValueError, match="no prompts"):
        generate(shapes_pipe, [], [], SamplingSettings())
