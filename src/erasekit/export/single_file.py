"""The erased pipeline as one ``.safetensors`` checkpoint in the original LDM/SGM layout.

AUTOMATIC1111 and ComfyUI load it as a checkpoint; diffusers loads it with
``StableDiffusionPipeline.from_single_file(path, config=<the base model's folder>)``
(``StableDiffusionXLPipeline`` for SDXL).  The file holds the UNet, the VAE and
the text encoder(s) (names: `erasekit.export.ldm_layout`); tokenizer and
scheduler settings come from the config folder, as for any such checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..models.delta import WeightDelta, apply_delta, revert_delta
from ..models.loading import detect_family, parse_dtype
from . import ldm_layout
from .output import ExportError, check_base


def checkpoint_state(pipe: Any, family: str | None = None) -> dict[str, torch.Tensor]:
    """Every UNet, VAE and text-encoder tensor of ``pipe`` under its original-layout name."""
    family = family or detect_family(pipe)
    try:
        state = {**ldm_layout.unet_state(pipe.unet), **ldm_layout.vae_state(pipe.vae)}
        if family == "sd1":
            state.update(ldm_layout.clip_state(pipe.text_encoder, ldm_layout.CLIP_PREFIX["sd1"]))
        elif family == "sd2":
            state.update(ldm_layout.open_clip_state(pipe.text_encoder, ldm_layout.OPEN_CLIP_PREFIX["sd2"]))
        else:
            state.update(ldm_layout.clip_state(pipe.text_encoder, ldm_layout.CLIP_PREFIX["sdxl"]))
            state.update(ldm_layout.open_clip_state(pipe.text_encoder_2, ldm_layout.OPEN_CLIP_PREFIX["sdxl"]))
    except ldm_layout.LayoutError as err:
        raise ExportError(str(err)) from None
    return state


def write_single_file(pipe: Any, delta: WeightDelta, path: str | Path, dtype: str | torch.dtype | None = None) -> Path:
    """Write ``pipe`` with ``delta`` merged to the checkpoint ``path`` (``pipe`` is left as it was).

    ``dtype`` (e.g. 'fp16') casts floating-point tensors; None keeps the model's.
    """
    from safetensors.torch import save_file

    check_base(pipe, delta)
    cast = parse_dtype(dtype) if dtype is not None else None
    apply_delta(pipe, delta)
    try:
        state = checkpoint_state(pipe)
        state = {k: (v.to(cast) if cast is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in state.items()}
        save_file(state, str(path), metadata={"format": "pt", "erasekit_delta_id": delta.delta_id,
                                              "erasekit_method": delta.manifest.method})
    finally:
        revert_delta(pipe, delta)
    return Path(path)
