"""The LoRA in the kohya key layout that AUTOMATIC1111 and ComfyUI read.

Per module: ``<prefix><path with '.' -> '_'>.lora_down.weight`` (= A),
``.lora_up.weight`` (= B) and ``.alpha`` (a scalar; the module is scaled by
alpha / rank, so alpha = rank keeps the change exact).  Prefixes and paths:

- UNet: ``lora_unet_`` + the module's name in the original LDM/SGM UNet
  (``input_blocks.1.1.transformer_blocks.0.attn2.to_k`` ->
  ``lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k``), see
  `erasekit.export.ldm_layout`;
- text encoders: ``lora_te_`` (SD-1.x/2.x) or ``lora_te1_`` / ``lora_te2_``
  (SDXL) + the transformers module name (``text_model_encoder_layers_0_self_attn_q_proj``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..models.delta import WeightDelta
from ..models.loading import detect_family
from . import ldm_layout
from .lora import LoraFactors
from .output import ExportError


def kohya_name(pipe: Any, module: str, family: str) -> str:
    """The kohya key stem of diffusers module ``module`` ('unet.<path>', 'text_encoder.<path>', ...)."""
    component, _, path = module.partition(".")
    if component == "unet":
        try:
            ldm = ldm_layout.unet_path(path + ".weight", pipe.unet.config).removesuffix(".weight")
        except ldm_layout.LayoutError as err:
            raise ExportError(str(err)) from None
        return "lora_unet_" + ldm.replace(".", "_")
    prefixes = {"text_encoder": "lora_te1_" if family == "sdxl" else "lora_te_", "text_encoder_2": "lora_te2_"}
    if component not in prefixes:
        raise ExportError(f"{module}: a kohya LoRA carries UNet and text-encoder layers only")
    return prefixes[component] + ldm_layout.clip_name(path).replace(".", "_")


def kohya_state(pipe: Any, factors: LoraFactors) -> dict[str, torch.Tensor]:
    """The kohya state dict of ``factors`` (lora_down / lora_up / alpha per module)."""
    family = detect_family(pipe)
    out = {}
    for module, (a, b) in factors.factors.items():
        stem = kohya_name(pipe, module, family)
        out[f"{stem}.lora_down.weight"] = a.contiguous()
        out[f"{stem}.lora_up.weight"] = b.contiguous()
        out[f"{stem}.alpha"] = torch.tensor(float(a.shape[0]), dtype=a.dtype)
    return out


def write_kohya(pipe: Any, factors: LoraFactors, path: str | Path, delta: WeightDelta) -> Path:
    """Write the kohya LoRA file ``path``."""
    from safetensors.torch import save_file

    save_file(kohya_state(pipe, factors), str(path),
              metadata={"format": "pt", "ss_network_module": "networks.lora", "erasekit_delta_id": delta.delta_id,
                        "erasekit_method": delta.manifest.method})
    return Path(path)
