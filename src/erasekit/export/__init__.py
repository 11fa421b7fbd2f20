"""Exports of an erased model for the tools people run it in.

One module per format, each writing one output folder atomically (with a
``README.md`` model card):

- `diffusers_folder`: the full diffusers pipeline with the delta merged, and the
  base model's card files (``erasekit.json``) kept;
- `lora`: the change as a LoRA in diffusers/peft keys (``load_lora_weights``);
- `kohya`: the same LoRA in the kohya keys AUTOMATIC1111 and ComfyUI read;
- `single_file`: the whole erased pipeline as one ``.safetensors`` in the
  original LDM/SGM layout (``from_single_file``, A1111, ComfyUI);
- `model_card` and `hub`: the card, and the upload to the Hugging Face Hub.

This layer sits between ``eval`` and ``cli``.
"""

from .output import ExportError, FORMATS

__all__ = ["ExportError", "FORMATS"]
