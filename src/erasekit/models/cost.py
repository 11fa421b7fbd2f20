"""What a real Stable Diffusion checkpoint costs, measured without downloading it.

1. **Parameter counts** of the real architectures: the UNet, text encoder(s)
   and VAE are instantiated from their configs (written below as data:
   SD-1.5, SD-2.1, SDXL base) on the ``meta`` device, which allocates nothing;
   a local diffusers folder's own configs work the same way.
2. **Per-sample UNet cost**, also on ``meta`` at the model's native latent
   size: forward and backward FLOPs (`torch.utils.flop_counter`) and the
   bytes autograd saves for the backward pass (saved-tensor hooks, each
   storage counted once, parameters excluded).  Attention is counted as a
   fused kernel that saves only q, k, v and the output, as PyTorch's
   flash/memory-efficient SDPA does on a GPU.  With gradient checkpointing the
   saved bytes are re-measured with checkpointing on, plus the activations of
   the largest checkpointed unit (one ResNet or transformer, recomputed
   during backward).

`erasekit.methods.estimate` combines these with each method's work into peak memory and time.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

GIB = 1024**3

# ------------------------------------------------------------------ real configs, as data
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD21_UNET = {**SD15_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
             "use_linear_projection": True, "upcast_attention": True}
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                       num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)
OPENCLIP_BIGG_TEXT = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                          num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
              block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    unet: dict
    text_encoders: tuple[tuple[str, dict], ...]  # (class name, config)
    vae: dict


KNOWN_MODELS = {
    "sd15": ModelSpec("SD-1.5", "sd1", SD15_UNET, (("CLIPTextModel", CLIP_L_TEXT),), SD_VAE),
    "sd21": ModelSpec("SD-2.1 (768)", "sd2", SD21_UNET, (("CLIPTextModel", OPENCLIP_H_TEXT),), SD_VAE),
    "sdxl": ModelSpec("SDXL base 1.0", "sdxl", SDXL_UNET,
                      (("CLIPTextModel", CLIP_L_TEXT), ("CLIPTextModelWithProjection", OPENCLIP_BIGG_TEXT)),
                      {**SD_VAE, "sample_size": 1024}),
}
FAMILY_MODELS = {"sd1": "sd15", "sd2": "sd21", "sdxl": "sdxl"}


def model_spec(model: str) -> ModelSpec:
    """A known model ('sd15', 'sd21', 'sdxl'), a local diffusers folder (its configs), or a single-file
    ``.safetensors`` checkpoint (the reference config of its family)."""
    if model in KNOWN_MODELS:
        return KNOWN_MODELS[model]
    from .loading import checkpoint_family, resolve_model_path

    path = Path(resolve_model_path(model))
    if path.is_file():
        return KNOWN_MODELS[FAMILY_MODELS[checkpoint_family(path)]]
    if not (path / "unet" / "config.json").exists():
        raise ValueError(f"cannot read the configs of {model!r}: give a local diffusers folder, a .safetensors "
                         f"checkpoint or one of {', '.join(KNOWN_MODELS)}")
    read = (lambda sub: json.loads((path / sub / "config.json").read_text()))
    encoders = []
    for sub in ("text_encoder", "text_encoder_2"):
        if (path / sub / "config.json").exists():
            cfg = read(sub)
            encoders.append(((cfg.get("architectures") or ["CLIPTextModel"])[0], cfg))
    unet = read("unet")
    family = "sdxl" if unet.get("addition_embed_type") == "text_time" else (
        "sd2" if unet.get("use_linear_projection") else "sd1")
    return ModelSpec(str(path), family, unet, tuple(encoders), read("vae"))


# ------------------------------------------------------------------ meta-device measurements
def _clean(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def meta_unet(config: dict):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**_clean(config))


def _count_params(build) -> int:
    with torch.device("meta"):
        module = build()
    return sum(p.numel() for p in module.parameters())


def text_encoder_params(cls_name: str, config: dict) -> int:
    import transformers

    cfg = transformers.CLIPTextConfig(**{k: v for k, v in _clean(config).items() if k != "architectures"})
    cls = getattr(transformers, cls_name if cls_name.startswith("CLIPTextModel") else "CLIPTextModel")
    return _count_params(lambda: cls(cfg))


def vae_params(config: dict) -> int:
    from diffusers import AutoencoderKL

    return _count_params(lambda: AutoencoderKL(**_clean(config)))


class _FusedAttention(torch.autograd.Function):
    """SDPA that keeps only q, k, v and the output for backward (flash / memory-efficient kernels)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, sdpa):
        with torch.no_grad():
            out = sdpa(q, k, v, attn_mask=mask, scale=scale)
        ctx.save_for_backward(q, k, v, out)
        ctx.mask, ctx.scale, ctx.sdpa = mask, scale, sdpa
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _ = ctx.saved_tensors
        with torch.enable_grad():
            q_, k_, v_ = (x.detach().requires_grad_(True) for x in (q, k, v))
            out = ctx.sdpa(q_, k_, v_, attn_mask=ctx.mask, scale=ctx.scale)
            gq, gk, gv = torch.autograd.grad(out, (q_, k_, v_), grad)
        return gq, gk, gv, None, None, None


@contextlib.contextmanager
def _fused_attention():
    original = F.scaled_dot_product_attention

    def fused(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        return _FusedAttention.apply(q, k, v, attn_mask, scale, original)

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@dataclass(frozen=True)
class UNetCost:
    params: int
    scope_params: int
    forward_flops: float  # one sample
    backward_flops: float  # one sample, gradients for the scope only
    saved_bytes: int  # float32 activations kept for backward, one sample
    saved_bytes_checkpointed: int  # the same with gradient checkpointing (incl. the largest recomputed block)


def _meta_training_unet(config: dict, scope: str):
    """(meta UNet of ``config``, its trained parameters by name): only the ``scope`` ('a+b' for several) needs grad."""
    from .scopes import get_scope

    unet = meta_unet(config)
    trained = {}
    for s in scope.split("+"):
        trained.update(get_scope(s).select(unet))
    for p in unet.parameters():
        p.requires_grad_(False)
    for p in trained.values():
        p.requires_grad_(True)
    return unet, trained


def _meta_inputs(config: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(latents, text states, extra kwargs) of one sample at the config's native size, on ``meta``."""
    h, w = (config["sample_size"],) * 2 if isinstance(config["sample_size"], int) else config["sample_size"]
    z = torch.randn(1, config.get("in_channels", 4), h, w, device="meta")
    ehs = torch.randn(1, 77, config["cross_attention_dim"], device="meta")
    kwargs: dict[str, Any] = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, device="meta"),
                                       "time_ids": torch.randn(1, 6, device="meta")}
    return z, ehs, kwargs


class _SavedBytes:
    """Bytes of the tensors autograd saves while ``hooks()`` is active (weights excluded, each storage once)."""

    def __init__(self, module: torch.nn.Module):
        self.params = {id(p) for p in module.parameters()}
        self.seen: dict[int, int] = {}
        self.alive: list[torch.Tensor] = []  # every counted tensor stays referenced, so no id is reused

    def pack(self, t: torch.Tensor):
        base = t._base if t._base is not None else t
        if id(base) not in self.params and id(base) not in self.seen:
            self.seen[id(base)] = base.numel() * base.element_size()
            self.alive.append(base)
        return (t, base)

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda x: x[0])

    @property
    def total(self) -> int:
        return sum(self.seen.values())


@lru_cache(maxsize=32)
def _unet_cost_cached(config_json: str, scope: str) -> UNetCost:
    from torch.utils.flop_counter import FlopCounterMode

    config = json.loads(config_json)
    saved_total, saved_gc = 0, 0
    flops_fwd = flops_all = 0.0
    for checkpointing in (False, True):
        unet, trained = _meta_training_unet(config, scope)
        if checkpointing:
            unet.enable_gradient_checkpointing()
            unet.train()  # some diffusers blocks checkpoint only in training mode
        z, ehs, kwargs = _meta_inputs(config)
        saved = _SavedBytes(unet)

        # the units diffusers checkpoints one by one: each ResNet and each transformer of a block
        blocks = [m for m in unet.modules() if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")]
        per_block: list[int] = []
        handles = [b.register_forward_pre_hook(lambda m, a: per_block.append(-saved.total)) for b in blocks]
        handles += [b.register_forward_hook(lambda m, a, o: per_block.__setitem__(-1, per_block[-1] + saved.total))
                    for b in blocks]
        # FLOPs are counted on the plain pass (a checkpointed pass adds one forward: see `estimate`)
        counter = None if checkpointing else FlopCounterMode(display=False)
        with counter or contextlib.nullcontext(), _fused_attention():
            with saved.hooks():
                out = unet(z, torch.tensor(500, device="meta"), encoder_hidden_states=ehs, **kwargs).sample
            fwd = counter.get_total_flops() if counter else 0
            out.float().pow(2).mean().backward()  # outside the hooks: recomputation is not "kept"
        for hd in handles:
            hd.remove()
        if checkpointing:
            saved_gc = saved.total + max(per_block_full)
        else:
            saved_total, flops_fwd, flops_all = saved.total, float(fwd), float(counter.get_total_flops())  # type: ignore[union-attr]
            per_block_full = list(per_block)
    n_params = sum(p.numel() for p in unet.parameters())
    return UNetCost(n_params, sum(p.numel() for p in trained.values()), flops_fwd, flops_all - flops_fwd,
                    saved_total, saved_gc)


@lru_cache(maxsize=32)
def _double_backward_bytes_cached(config_json: str, scope: str) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = json.loads(config_json)
    unet, trained = _meta_training_unet(config, scope)
    z, ehs, kwargs = _meta_inputs(config)
    saved = _SavedBytes(unet)
    with sdpa_kernel([SDPBackend.MATH]), saved.hooks():
        out = unet(z, torch.tensor(500, device="meta"), encoder_hidden_states=ehs, **kwargs).sample
        torch.autograd.grad(out.float().pow(2).mean(), list(trained.values()), create_graph=True)
    return saved.total


def double_backward_saved_bytes(config: dict, scope: str) -> int:
    """Bytes a loss on the gradient keeps for its backward, one sample: the forward with the math attention
    kernel (fused kernels have no double backward) plus the graph of ``autograd.grad(create_graph=True)``.

    This is what TRuST's CSR term holds at its peak (measured on the ``meta`` device, float32).
    """
    return _double_backward_bytes_cached(json.dumps(_clean(config), sort_keys=True, default=list), scope)


def unet_cost(config: dict, scope: str) -> UNetCost:
    """Cost of one UNet sample at the config's native size, training ``scope`` ('a+b' for several)."""
    return _unet_cost_cached(json.dumps(_clean(config), sort_keys=True, default=list), scope)


