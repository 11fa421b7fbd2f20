"""Tiny randomly initialised UNets with the layout of each Stable Diffusion family.

They follow the small configurations diffusers uses in its own tests, so code
that walks a UNet's structure (parameter scopes, deltas, methods) can be tested
in seconds on a CPU.  The weights are random: never use them to judge quality.

- ``sd1``: SD-1.x layout (conv projections in the transformers, per-block head
  count, cross-attention at the higher resolutions, 32-d text embeddings).
- ``sd2``: SD-2.x layout (``use_linear_projection=True``, per-block
  ``attention_head_dim`` tuple, upcast attention).
- ``sdxl``: SDXL layout (``addition_embed_type="text_time"``, several transformer
  layers per block, plain first block, 64-d text embeddings, pooled 32-d
  ``text_embeds`` and 6 ``time_ids`` as added conditions).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

FAMILIES = ("sd1", "sd2", "sdxl")

_COMMON = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
)

_CONFIGS: dict[str, dict] = {
    "sd1": dict(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    ),
    "sd2": dict(
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        upcast_attention=True,
    ),
    "sdxl": dict(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + pooled text (32)
    ),
}

# Sizes a forward pass needs: text sequence width, and SDXL's pooled-text width.
TEXT_DIM = {"sd1": 32, "sd2": 32, "sdxl": 64}
POOLED_DIM = 32


def tiny_unet_config(family: str) -> dict:
    """The keyword config of a tiny UNet of ``family`` ('sd1', 'sd2' or 'sdxl')."""
    if family not in _CONFIGS:
        raise ValueError(f"unknown UNet family {family!r}; choose from {', '.join(FAMILIES)}")
    return {**_COMMON, **_CONFIGS[family]}


def tiny_unet(family: str = "sd1", seed: int = 0) -> UNet2DConditionModel:
    """A tiny UNet2DConditionModel of ``family`` with seeded random weights (eval mode)."""
    config = tiny_unet_config(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config)
    return unet.eval()


def tiny_unet_inputs(family: str, batch: int = 1, seq_len: int = 5, seed: int = 0) -> dict:
    """Keyword inputs for one forward pass of ``tiny_unet(family)``."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "sample": torch.randn(batch, 4, 8, 8, generator=g),
        "timestep": torch.tensor(10),
        "encoder_hidden_states": torch.randn(batch, seq_len, TEXT_DIM[family], generator=g),
    }
    if family == "sdxl":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, POOLED_DIM, generator=g),
            "time_ids": torch.tensor([[8.0, 8.0, 0.0, 0.0, 8.0, 8.0]]).repeat(batch, 1),
        }
    return inputs


# ------------------------------------------------------------------ a whole pipeline
TINY_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

# Two levels -> downsampling factor 2: 16 px images give 8 x 8 latents (the tiny UNet's sample_size).
TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=16,
)

SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


# SD-2.x text encoders are OpenCLIP ViT-H converted to CLIPTextModel: plain GELU, no quick-GELU.
TINY_SD2_TEXT_CONFIG = {**TINY_TEXT_CONFIG, "hidden_act": "gelu"}
# SDXL: CLIP ViT-L (quick-GELU) + OpenCLIP bigG with a text projection (GELU).  Their hidden widths
# concatenate to the tiny SDXL UNet's cross_attention_dim (32 + 32 = 64); the projection width is the
# pooled ``text_embeds`` width the UNet's added embedding expects (POOLED_DIM).
TINY_SDXL_TEXT_CONFIG_2 = {**TINY_TEXT_CONFIG, "hidden_act": "gelu", "projection_dim": POOLED_DIM}
DEFAULT_PREDICTION = {"sd1": "epsilon", "sd2": "v_prediction", "sdxl": "epsilon"}


def _tiny_tokenizer(pad_token: str | None = None):
    """The shipped CLIP BPE tokenizer; SD-2.x and SDXL's second tokenizer pad with '!' (id 0)."""
    from transformers import CLIPTokenizer

    from ..world.assets_paths import TOKENIZER_DIR

    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), **extra)


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def tiny_pipeline(family: str = "sd1", seed: int = 0, prediction_type: str | None = None):
    """A real, randomly initialised tiny pipeline of ``family``, CPU, eval mode, no safety checker.

    - ``sd1``: ``StableDiffusionPipeline``, 2-layer 32-d CLIP text encoder (quick-GELU).
    - ``sd2``: ``StableDiffusionPipeline`` with an OpenCLIP-like text encoder
      (GELU), the tiny SD-2.x UNet layout, a '!'-padding tokenizer as SD-2.x
      ships, and a v-prediction scheduler by default.
    - ``sdxl``: ``StableDiffusionXLPipeline`` with ``CLIPTextModel`` and
      ``CLIPTextModelWithProjection`` (32-d each, concatenated to the UNet's
      64-d cross-attention input; 32-d pooled projection), ``tokenizer`` and
      ``tokenizer_2`` (the latter padding with '!', as SDXL's does).

    Every family uses the shipped CLIP tokenizer (full 49,408-token vocabulary),
    a 2-level AutoencoderKL (16 px images <-> 8 x 8 x 4 latents) and a DDIM
    scheduler with Stable Diffusion's settings; ``prediction_type`` None takes
    the family's default (v-prediction for sd2, epsilon otherwise).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = tiny_unet(family, seed=seed)  # validates the family
    vae = _seeded(seed + 2, lambda: AutoencoderKL(**TINY_VAE_CONFIG))
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG, prediction_type=prediction_type or DEFAULT_PREDICTION[family])
    if family == "sdxl":
        text_encoder = _seeded(seed + 1, lambda: CLIPTextModel(CLIPTextConfig(**TINY_TEXT_CONFIG)))
        text_encoder_2 = _seeded(seed + 3, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**TINY_SDXL_TEXT_CONFIG_2)))
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                         tokenizer=_tiny_tokenizer(), tokenizer_2=_tiny_tokenizer(pad_token="!"),
                                         unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
                                         add_watermarker=False)
    else:
        text_config = TINY_TEXT_CONFIG if family == "sd1" else TINY_SD2_TEXT_CONFIG
        text_encoder = _seeded(seed + 1, lambda: CLIPTextModel(CLIPTextConfig(**text_config)))
        tokenizer = _tiny_tokenizer(pad_token="!" if family == "sd2" else None)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
