"""Peak GPU memory and wall time of each method on real checkpoints, estimated without downloading them.

How an estimate is made (`estimate`):

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
3. **Work per method** (`method_work`): UNet samples per iteration without
   grad (partial generations, frozen references) and with grad, the training
   batch, and one-off sampling (trajectories, latent pools), read off each
   method's algorithm and config.  `tests/test_estimate.py` checks these
   counts against UNet calls COUNTED while the methods run on the tiny models.
4. **Memory** = pipeline weights (float32, as fine-tuning requires) + one
   reference copy, gradients and optimiser state of the trained scope (Adam:
   8 bytes/parameter; 8-bit Adam: 2) + saved activations x training batch
   (x 2 for TRuST's CSR double backward; halved under bf16 autocast, which
   also caches a bf16 copy of the trained weights) + a fixed CUDA overhead.
5. **Time** = FLOPs / an effective throughput calibrated on the one timing
   the papers give for a 24 GB GPU: TRCE stage 2, 300 iterations in about
   300 s on an RTX 4090 (SD-1.4, 512 px).  One-off sampling is reported
   separately (TRCE's trajectories are cached and reused across runs).

These are estimates from counted work, not measurements on a GPU: expect the
time to be right within a factor of about two, memory within ~20%.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

GIB = 1024**3
CUDA_OVERHEAD_BYTES = int(0.8 * GIB)  # CUDA context, allocator fragmentation, cuBLAS workspaces

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


@lru_cache(maxsize=32)
def _unet_cost_cached(config_json: str, scope: str) -> UNetCost:
    from torch.utils.flop_counter import FlopCounterMode

    from .scopes import get_scope

    config = json.loads(config_json)
    scopes = scope.split("+")
    saved_total, saved_gc = 0, 0
    flops_fwd = flops_all = 0.0
    for checkpointing in (False, True):
        unet = meta_unet(config)
        params = {id(p) for p in unet.parameters()}
        trained = {}
        for s in scopes:
            trained.update(get_scope(s).select(unet))
        for p in unet.parameters():
            p.requires_grad_(False)
        for p in trained.values():
            p.requires_grad_(True)
        if checkpointing:
            unet.enable_gradient_checkpointing()
            unet.train()  # some diffusers blocks checkpoint only in training mode
        h, w = (config["sample_size"],) * 2 if isinstance(config["sample_size"], int) else config["sample_size"]
        z = torch.randn(1, config.get("in_channels", 4), h, w, device="meta")
        ehs = torch.randn(1, 77, config["cross_attention_dim"], device="meta")
        kwargs: dict[str, Any] = {}
        if config.get("addition_embed_type") == "text_time":
            pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, device="meta"),
                                           "time_ids": torch.randn(1, 6, device="meta")}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor):
            base = t._base if t._base is not None else t
            if id(base) not in params and id(base) not in seen:
                seen[id(base)] = base.numel() * base.element_size()
            return (t, base)  # keep base alive so ids stay unique while counting

        # the units diffusers checkpoints one by one: each ResNet and each transformer of a block
        blocks = [m for m in unet.modules() if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")]
        per_block: list[int] = []
        handles = [b.register_forward_pre_hook(lambda m, a: per_block.append(-sum(seen.values()))) for b in blocks]
        handles += [b.register_forward_hook(lambda m, a, o: per_block.__setitem__(-1, per_block[-1] + sum(seen.values())))
                    for b in blocks]
        # FLOPs are counted on the plain pass (a checkpointed pass adds one forward: see `estimate`)
        counter = None if checkpointing else FlopCounterMode(display=False)
        with counter or contextlib.nullcontext(), _fused_attention():
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x[0]):
                out = unet(z, torch.tensor(500, device="meta"), encoder_hidden_states=ehs, **kwargs).sample
            fwd = counter.get_total_flops() if counter else 0
            out.float().pow(2).mean().backward()  # outside the hooks: recomputation is not "kept"
        for hd in handles:
            hd.remove()
        if checkpointing:
            saved_gc = sum(seen.values()) + max(per_block_full)
        else:
            saved_total, flops_fwd, flops_all = sum(seen.values()), float(fwd), float(counter.get_total_flops())  # type: ignore[union-attr]
            per_block_full = list(per_block)
    n_params = sum(p.numel() for p in unet.parameters())
    return UNetCost(n_params, sum(p.numel() for p in trained.values()), flops_fwd, flops_all - flops_fwd,
                    saved_total, saved_gc)


def unet_cost(config: dict, scope: str) -> UNetCost:
    """Cost of one UNet sample at the config's native size, training ``scope`` ('a+b' for several)."""
    return _unet_cost_cached(json.dumps(_clean(config), sort_keys=True, default=list), scope)


# ------------------------------------------------------------------ what each method runs
@dataclass(frozen=True)
class MethodWork:
    """UNet samples a method runs: per iteration without grad / with grad, its training batch, one-off sampling."""

    method: str
    scope: str
    iterations: int
    nograd_per_iter: float
    grad_per_iter: float
    train_batch: int
    setup_nograd: float = 0.0
    setup_grad: float = 0.0
    double_backward: bool = False
    closed_form: bool = False
    notes: str = ""


def method_work(method: str, config=None, kind: str = "object") -> MethodWork:
    """Counts for ``method`` with ``config`` (default: the method's SD config) on a concept of ``kind``."""
    from ..methods.base import get_method

    info = get_method(method)
    cfg = config if config is not None else info.config_cls()
    if method in ("uce", "trce-t"):
        return MethodWork(method, "cross_attn_kv", 0, 0, 0, 0, closed_form=True,
                          notes="closed form: text encoding + one linear solve per K/V projection")
    if method in ("esd-x", "esd-u"):
        n = cfg.n_steps
        # partial generation to a uniform step s in 0..n-1 (mean (n-1)/2 CFG steps of 2), frozen reference 2
        return MethodWork(method, cfg.scope or {"esd-x": "cross_attn", "esd-u": "non_cross_attn"}[method],
                          cfg.iterations, (n - 1) + 2, 1, 1)
    if method == "kscu":
        from ..methods.kscu import KIND_SCOPES, default_cap, key_step_schedule

        iterations, start = cfg.resolved(kind)
        cap = cfg.cap if cfg.cap is not None else default_cap(cfg.n_steps)
        schedule = key_step_schedule(iterations, start, cfg.n_steps, cfg.traversals_per_raise, cap)
        steps, prev = 0, None
        for s in schedule:  # running trajectory: +1 step while climbing, from scratch on wrap-around
            steps += (s - prev) if prev is not None and s > prev else s
            prev = s
        return MethodWork(method, cfg.scope or KIND_SCOPES[kind], iterations,
                          2 * steps / max(1, iterations) + 2, 2, 2)
    if method in ("trce-v", "trce"):
        setup = cfg.n_trajectories * cfg.max_step * 2 + cfg.n_uncond * (cfg.n_steps - 1)
        scope = cfg.scope or "visual"
        return MethodWork(method, scope, cfg.total_iterations(),
                          4, 3, 3, setup_nograd=setup,
                          notes="one-off trajectory sampling (cacheable: trajectory_cache) reported separately")
    if method in ("trust", "salun", "trust-kv"):
        kv = cfg.forget_loss == "kv"  # the K/V forgetting loss itself needs no UNet pass
        csr = "csr" in cfg.betas()
        sample_scorer = cfg.scorer_draws_sample()
        step_sample = cfg.step_draws_sample()
        pool = cfg.pool_size * cfg.n_steps * 2 if cfg.needs_target_pool() else 0
        retain = 0  # retain pools exist only for combination/conditional concepts
        per_mask = cfg.saliency_samples if sample_scorer else 0
        dynamic = bool(cfg.mask_every)
        masks_per_iter = per_mask / cfg.mask_every if dynamic else 0.0
        static = 0.0 if dynamic else per_mask  # the one mask: a reference and a gradient pass per sample
        draws = int(step_sample) + masks_per_iter
        nograd = (0 if kv else 1) + masks_per_iter + (0 if cfg.latents == "pool" else (cfg.n_steps - 1) * draws)
        return MethodWork(method, cfg.scope or "cross_attn_qkv", cfg.iterations, nograd, draws,
                          1, setup_nograd=pool + retain + static, setup_grad=static, double_backward=csr,
                          notes=("static mask from %d samples" % per_mask) if not dynamic else "")
    raise ValueError(f"no work model for method {method!r}")


# ------------------------------------------------------------------ the estimate
# Calibration: TRCE stage 2 (300 iterations: 4 no-grad + 3 grad samples each, visual scope) ~300 s on an
# RTX 4090 with SD-1.4 at 512 px (TRCE paper).  Effective FLOP/s = that work / 300 s.
CALIBRATION = {"model": "sd15", "method": "trce-v", "iterations": 300, "seconds": 300.0, "gpu": "RTX 4090 (24 GB)"}


@lru_cache(maxsize=1)
def effective_flops_per_second() -> float:
    cost = unet_cost(KNOWN_MODELS[CALIBRATION["model"]].unet, "visual")
    per_iter = 4 * cost.forward_flops + 3 * (cost.forward_flops + cost.backward_flops)
    return CALIBRATION["iterations"] * per_iter / CALIBRATION["seconds"]


@dataclass
class Estimate:
    method: str
    model: str
    gpu_memory_gib: float
    peak_gib: float
    fits: bool
    train_seconds: float
    setup_seconds: float
    memory_gib: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.memory_gib.items())
        fit = "fits" if self.fits else "does NOT fit"
        lines = [
            f"{self.method} on {self.model}: peak ~{self.peak_gib:.1f} GiB ({fit} in {self.gpu_memory_gib:.0f} GiB), "
            f"training ~{_duration(self.train_seconds)}"
            + (f" + one-off sampling ~{_duration(self.setup_seconds)}" if self.setup_seconds else ""),
            f"  memory (GiB): {parts}",
            f"  settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
        ]
        if self.notes:
            lines.append(f"  note: {self.notes}")
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(method: str, model: str = "sd15", config=None, kind: str = "object", gpu_memory_gib: float = 24.0,
             gradient_checkpointing: bool | None = None, mixed_precision: str | None = None,
             optimizer: str | None = None) -> Estimate:
    """Peak memory and time of ``method`` on ``model`` (see the module docstring for the derivation).

    ``gradient_checkpointing`` / ``mixed_precision`` / ``optimizer`` default to the config's values.
    """
    spec = model_spec(model)
    work = method_work(method, config, kind)
    cfg = config
    gc_on = gradient_checkpointing if gradient_checkpointing is not None else bool(getattr(cfg, "gradient_checkpointing", False))
    precision = mixed_precision or getattr(cfg, "mixed_precision", "no")
    opt = optimizer or getattr(cfg, "optimizer", "adam")
    cost = unet_cost(spec.unet, work.scope)
    text = sum(text_encoder_params(c, conf) for c, conf in spec.text_encoders)
    vae = vae_params(spec.vae)
    params = {"unet": cost.params, "text_encoders": text, "vae": vae, "trained_scope": cost.scope_params}
    mem = {"weights (fp32)": 4 * (cost.params + text + vae) / GIB}
    flops = effective_flops_per_second()
    if work.closed_form:
        mem["cuda overhead"] = CUDA_OVERHEAD_BYTES / GIB
        peak = sum(mem.values())
        return Estimate(method, spec.name, gpu_memory_gib, peak, peak <= gpu_memory_gib, 30.0, 0.0, mem, params,
                        {"precision": "fp32"}, work.notes + " (time: text encoding and solves, well under a minute)")
    scope = cost.scope_params
    mem["reference copy of scope"] = 4 * scope / GIB
    mem["gradients"] = 4 * scope / GIB
    mem["optimizer state"] = (2 if opt == "adam8bit" else 8) * scope / GIB
    if method == "trce":  # stage 2's "original model" reference also holds the pre-stage-1 K/V weights
        mem["stage-1 K/V reference"] = 4 * unet_cost(spec.unet, "cross_attn_kv").scope_params / GIB
    act = cost.saved_bytes_checkpointed if gc_on else cost.saved_bytes
    act *= work.train_batch * (2 if work.double_backward else 1)
    if precision in ("bf16", "fp16"):
        act /= 2
        mem["bf16 weight cache"] = 2 * scope / GIB
    mem["activations"] = act / GIB
    mem["cuda overhead"] = CUDA_OVERHEAD_BYTES / GIB
    peak = sum(mem.values())
    grad_flops = cost.forward_flops + cost.backward_flops * (2 if work.double_backward else 1)
    if gc_on:
        grad_flops += cost.forward_flops  # recompute
    per_iter = work.nograd_per_iter * cost.forward_flops + work.grad_per_iter * grad_flops
    train_s = work.iterations * per_iter / flops
    setup_s = (work.setup_nograd * cost.forward_flops + work.setup_grad * grad_flops) / flops
    settings = {"iterations": work.iterations, "scope": work.scope, "train_batch": work.train_batch,
                "gradient_checkpointing": gc_on, "mixed_precision": precision, "optimizer": opt}
    return Estimate(method, spec.name, gpu_memory_gib, peak, peak <= gpu_memory_gib, train_s, setup_s, mem, params,
                    settings, work.notes)


def fitting_settings(method: str, model: str, gpu_memory_gib: float = 24.0, kind: str = "object") -> Estimate:
    """The cheapest settings that fit: plain fp32, then + checkpointing, + bf16, + 8-bit Adam."""
    ladder = [dict(gradient_checkpointing=False, mixed_precision="no", optimizer="adam"),
              dict(gradient_checkpointing=True, mixed_precision="no", optimizer="adam"),
              dict(gradient_checkpointing=True, mixed_precision="bf16", optimizer="adam"),
              dict(gradient_checkpointing=True, mixed_precision="bf16", optimizer="adam8bit")]
    last = None
    for option in ladder:
        last = estimate(method, model, kind=kind, gpu_memory_gib=gpu_memory_gib, **option)
        if last.fits:
            return last
    return last  # type: ignore[return-value]
