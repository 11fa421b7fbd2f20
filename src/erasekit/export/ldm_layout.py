"""Names of a diffusers pipeline's tensors in the original LDM (SD-1.x/2.x) and SGM (SDXL) checkpoint layout.

UNet (under ``model.diffusion_model.``), with ``L`` = ``layers_per_block``:

- ``conv_in`` -> ``input_blocks.0.0``; ``time_embedding.linear_1/2`` ->
  ``time_embed.0/2``; SDXL's ``add_embedding.linear_1/2`` -> ``label_emb.0.0/0.2``;
  ``conv_norm_out`` -> ``out.0``; ``conv_out`` -> ``out.2``;
- down block i, layer j: ``input_blocks.{i(L+1)+j+1}``, resnet at ``.0``,
  transformer at ``.1``; its downsampler ``input_blocks.{(i+1)(L+1)}.0.op``;
- mid block: resnets at ``middle_block.0`` and ``.2``, transformer at ``.1``;
- up block i, layer j (L+1 layers): ``output_blocks.{i(L+1)+j}``, resnet at
  ``.0``, transformer at ``.1``; its upsampler at ``output_blocks.{i(L+1)+L}.1.conv``
  (``.2.conv`` when the block has transformers);
- resnet members: ``norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut`` ->
  ``in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection``;
  transformer members keep their names.

VAE (under ``first_stage_model.``): ``down_blocks.i.resnets.j`` ->
``down.i.block.j``, ``downsamplers.0`` -> ``downsample``, up block i ->
``up.{n-1-i}`` (``upsamplers.0`` -> ``upsample``), ``mid_block.resnets.j`` ->
``mid.block_{j+1}``, ``mid_block.attentions.0`` -> ``mid.attn_1`` (``group_norm,
to_q, to_k, to_v, to_out.0`` -> ``norm, q, k, v, proj_out``, weights as 1x1
convolutions), ``conv_shortcut`` -> ``nin_shortcut``, ``conv_norm_out`` -> ``norm_out``.

Text encoders: a CLIP (OpenAI) encoder keeps its transformers names under
``cond_stage_model.transformer.`` (SD-1.x) or ``conditioner.embedders.0.transformer.``
(SDXL); an OpenCLIP encoder (SD-2.x ``cond_stage_model.model.``, SDXL's second
``conditioner.embedders.1.model.``) has ``token_embedding``, ``positional_embedding``,
``transformer.resblocks.k.{ln_1, attn.in_proj_weight/bias (q, k, v stacked),
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final`` and a transposed
``text_projection``.
"""

from __future__ import annotations

import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
OPEN_CLIP_PREFIX = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
               "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
               "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


class LayoutError(ValueError):
    """A tensor has no place in the original layout (an architecture the mapping does not cover)."""


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}" if tail else _RESNET.get(head, head)


def unet_path(name: str, config) -> str:
    """The LDM/SGM name (without ``model.diffusion_model.``) of diffusers UNet tensor or module ``name``."""
    layers = config["layers_per_block"] if isinstance(config, dict) else config.layers_per_block
    up_types = config["up_block_types"] if isinstance(config, dict) else config.up_block_types
    if not isinstance(layers, int):
        raise LayoutError(f"layers_per_block={layers!r} per block is not supported by the original layout mapping")
    for old, new in _UNET_FIXED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = f"input_blocks.{i * (layers + 1) + j + 1}"
        return f"{block}.0.{_resnet(rest)}" if kind == "resnets" else f"{block}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        j, rest = int(m[2]), m[3]
        return f"middle_block.{2 * j}.{_resnet(rest)}" if m[1] == "resnets" else f"middle_block.{2 * j + 1}.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = f"output_blocks.{i * (layers + 1) + j}"
        return f"{block}.0.{_resnet(rest)}" if kind == "resnets" else f"{block}.1.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name)
    if m:
        i = int(m[1])
        slot = 2 if "CrossAttn" in up_types[i] else 1
        return f"output_blocks.{i * (layers + 1) + layers}.{slot}.conv.{m[2]}"
    raise LayoutError(f"unet.{name} has no counterpart in the original UNet layout")


def vae_path(name: str, num_up_blocks: int) -> str:
    """The LDM name (without ``first_stage_model.``) of diffusers VAE tensor ``name``."""
    name = name.replace("conv_norm_out", "norm_out")
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
    if m:
        side, kind, j, rest = m[1], m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"{side}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        rest = re.sub(r"^(group_norm|to_q|to_k|to_v|to_out\.0)\.",
                      lambda g: {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
                      [g[1]] + ".", rest)
        return f"{side}.mid.attn_1.{rest}"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)", name)
    if m:
        i = int(m[1])
        if m[3] is not None:
            return f"encoder.down.{i}.block.{m[3]}.{m[4].replace('conv_shortcut', 'nin_shortcut')}"
        return f"encoder.down.{i}.downsample.{m[4]}"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)", name)
    if m:
        i = num_up_blocks - 1 - int(m[1])
        if m[3] is not None:
            return f"decoder.up.{i}.block.{m[3]}.{m[4].replace('conv_shortcut', 'nin_shortcut')}"
        return f"decoder.up.{i}.upsample.{m[4]}"
    if re.match(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.|(post_)?quant_conv\.", name):
        return name
    raise LayoutError(f"vae.{name} has no counterpart in the original VAE layout")


def clip_name(name: str) -> str:
    """A transformers CLIP tensor or module name with its ``text_model.`` prefix (newer transformers drop it)."""
    return name if name.startswith(("text_model.", "text_projection")) else "text_model." + name


def unet_state(unet) -> dict[str, torch.Tensor]:
    """The UNet's tensors under their LDM/SGM names."""
    return {UNET_PREFIX + unet_path(k, unet.config): v for k, v in unet.state_dict().items()}


def vae_state(vae) -> dict[str, torch.Tensor]:
    """The VAE's tensors under their LDM names; the mid-block attention weights as 1x1 convolutions."""
    n = len(vae.config.up_block_types)
    out = {}
    for k, v in vae.state_dict().items():
        name = vae_path(k, n)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", name) and v.ndim == 2:
            v = v[:, :, None, None]
        out[VAE_PREFIX + name] = v
    return out


def clip_state(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """An OpenAI-CLIP text encoder's tensors under ``prefix`` + their transformers names."""
    return {prefix + clip_name(k): v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}


def open_clip_state(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A text encoder's tensors in the OpenCLIP layout under ``prefix`` (q, k, v stacked into ``in_proj``)."""
    fixed = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
             "text_model.embeddings.position_embedding.weight": "positional_embedding",
             "text_model.final_layer_norm.weight": "ln_final.weight",
             "text_model.final_layer_norm.bias": "ln_final.bias"}
    members = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}
    state = {clip_name(k): v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {}
    stacked: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        if k in fixed:
            out[prefix + fixed[k]] = v
        elif k == "text_projection.weight":
            out[prefix + "text_projection"] = v.T.contiguous()
        else:
            m = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
            if m is None:
                raise LayoutError(f"text encoder tensor {k} has no counterpart in the OpenCLIP layout")
            block, member, kind = f"{prefix}transformer.resblocks.{m[1]}.", m[2], m[3]
            qkv = re.match(r"self_attn\.(q|k|v)_proj$", member)
            if qkv:
                stacked.setdefault(f"{block}attn.in_proj_{kind}", {})[qkv[1]] = v
            elif member in members:
                out[f"{block}{members[member]}.{kind}"] = v
            else:
                raise LayoutError(f"text encoder tensor {k} has no counterpart in the OpenCLIP layout")
    for name, parts in stacked.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
