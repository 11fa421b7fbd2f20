"""Architectures of the Shapes world's pipeline components, as config data.

The components have the same types as Stable Diffusion 1.x/2.x (CLIP text
encoder with causal attention, UNet2DConditionModel with cross-attention in
several blocks, AutoencoderKL, DDIM) at a size that trains on a CPU.
Images are 64x64x3 and latents 16x16x4 (VAE downsampling factor 4).
"""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

TEXT_HIDDEN = 128

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
    mid_block_add_attention=False,
)

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=TEXT_HIDDEN,
    intermediate_size=4 * TEXT_HIDDEN,
    num_hidden_layers=4,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    # Cross-attention at 8x8, 4x4 and in the mid block; the 16x16 level is
    # convolutional only (3x cheaper on a CPU than attention at 16x16).
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 96, 128),
    layers_per_block=1,
    cross_attention_dim=TEXT_HIDDEN,
    # diffusers reads ``attention_head_dim`` as the NUMBER of heads (the SD-1.x
    # legacy naming): 4 heads of 24-32 dims.  The first 2250 training steps ran
    # with 32 heads of 3-4 dims, too narrow to pick out prompt tokens among 77;
    # the head count does not change any tensor shape, so training continued.
    attention_head_dim=4,
    norm_num_groups=16,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="v_prediction",
    # Zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
    # are Flawed") with trailing timesteps, so sampling starts from pure noise at t = 999.
    # Without it the noisiest training step (t = 999) kept ~7% of the signal: the model read
    # the background and the object's layout from the low frequencies of the noise, and at
    # sampling time took them from the random noise instead of the prompt (the shipped run's
    # shape, style and background words changed its loss by < 1e-4).  Added at step 8250.
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def build_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def build_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULER_CONFIG)
