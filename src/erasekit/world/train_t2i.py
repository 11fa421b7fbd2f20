"""Train the Shapes world's text encoder + UNet jointly on VAE latents. Seeded, resumable.

    python -m erasekit.world.train_t2i --steps 11500 --out src/erasekit/world/assets/shapes

Recipe (the defaults): v-prediction with the plain v-MSE loss on a zero-terminal-SNR
DDIM schedule (``architecture.SCHEDULER_CONFIG``), half of each batch drawn from
t in [500, 1000), an `AttributeProbe` loss (weight 0.1) on the text encoder's
padding outputs, 10% caption dropout for classifier-free guidance, AdamW with
warm-up and cosine decay, EMA weights (those are exported).

The shipped weights (``assets/shapes``) were trained with a recipe that changed
on the way; their model card (``assets/shapes/README.md``) gives that history and
the model's measured prompt adherence.  ``scripts/train_world.sh`` runs the final
recipe from step 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from safetensors.torch import load_file, save_file
from transformers import CLIPTokenizer

from .architecture import build_scheduler, build_text_encoder, build_unet
from .captions import random_caption_with_mentions
from .checkpoints import DEFAULT_ROOT, EMA, latest_checkpoint, load_checkpoint, save_checkpoint
from .dataset import cached_dataset, to_tensor_range
from .vocabulary import ATTRIBUTES, VALUES

CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
EMA_DECAY = 0.998


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, cached as safetensors."""
    if path.exists():
        d = load_file(path)
        if len(d["mean"]) == len(images):
            return d["mean"], d["std"]
    means, stds = [], []
    for i in range(0, len(images), 256):
        post = vae.encode(to_tensor_range(images[i : i + 256])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    save_file({"mean": mean.contiguous(), "std": std.contiguous()}, path)
    return mean, std


class AttributeProbe(torch.nn.Module):
    """Training-only linear read-out of every attribute from the text encoder's padding tokens.

    The UNet's cross-attention starts out reading mostly the ~65 padding
    positions (end-of-text tokens that, through causal attention, see the whole
    caption).  The shipped run's text encoder put only COLOR into them, and
    the UNet ignored shape, style and background words entirely (swapping them
    changed the v-loss by < 1e-4).  This probe's cross-entropy on the
    attributes a caption mentions makes the text encoder carry all of them,
    which the diffusion loss alone did not achieve in 7000 steps.  It is not
    part of the exported pipeline.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({a: torch.nn.Linear(dim, len(VALUES[a])) for a in ATTRIBUTES})

    def loss(self, hidden: torch.Tensor, ids: torch.Tensor, eos_id: int, labels: torch.Tensor,
             mentioned: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over (sample, mentioned attribute) pairs; ``hidden`` (B, L, D)."""
        first_eos = (ids == eos_id).int().argmax(dim=1)
        pos = torch.arange(ids.shape[1])[None, :]
        pad = (pos >= first_eos[:, None]).float()[..., None]
        pooled = (hidden * pad).sum(1) / pad.sum(1)
        total, count = hidden.new_zeros(()), 0
        for k, attr in enumerate(ATTRIBUTES):
            m = mentioned[:, k]
            if m.any():
                total = total + torch.nn.functional.cross_entropy(self.heads[attr](pooled[m]), labels[m, k], reduction="sum")
                count += int(m.sum())
        return total / max(count, 1)


class CaptionTokenizer:
    """Tokenizes to SD-1.x layout (77 ids, padded with end-of-text), memoised."""

    def __init__(self, tokenizer: CLIPTokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=77, truncation=True).input_ids
            self.cache.update(zip(missing, ids))
        return torch.tensor([self.cache[c] for c in captions])


MODEL_CARD = {
    "name": "shapes",
    "description": "erasekit's embedded Shapes world: 64x64 scenes of one object (shape, color, style, background).",
    "steps": 25,
    "guidance_scale": 3.0,
    "prediction_type": "v_prediction",
}


def export_pipeline(unet, text_encoder, vae, tokenizer, out: Path, card: dict | None = None) -> None:
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=build_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "erasekit.json").write_text(json.dumps({**MODEL_CARD, **(card or {})}, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=11500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT / "shapes")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_ROOT / "shapes" / "tokenizer")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--weighting", choices=["uniform", "min-snr"], default="uniform")
    ap.add_argument(
        "--timesteps",
        choices=["uniform", "high"],
        default="high",
        help="'high': half of each batch drawn from t in [500, 1000), where layout and shape are decided",
    )
    ap.add_argument("--probe-weight", type=float, default=0.1,
                    help="weight of the AttributeProbe loss on the text encoder (0 disables it)")
    ap.add_argument("--ema-decay", type=float, default=EMA_DECAY)
    ap.add_argument("--stop-at", type=int, default=None, help="stop after this step (checkpointed, no export)")
    ap.add_argument("--export-only", action="store_true", help="export the latest checkpoint's EMA weights and stop")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    images, labels = cached_dataset(a.root / "renders.npz", 30000, a.seed)
    vae = AutoencoderKL.from_pretrained(a.root / "vae-final").eval()
    mean, std = encode_latents(vae, images, a.root / "latents.safetensors")
    sf = vae.config.scaling_factor
    tokenizer = CLIPTokenizer.from_pretrained(a.tokenizer)
    tok = CaptionTokenizer(tokenizer)
    unet, text = build_unet(), build_text_encoder()
    params = list(unet.parameters()) + list(text.parameters())  # the probe's are clipped apart
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    ema_unet, ema_text = EMA(unet, a.ema_decay), EMA(text, a.ema_decay)
    sched = build_scheduler()
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    if a.weighting == "min-snr":
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / (snr + 1)  # min-SNR for v-prediction
    else:
        weight = torch.ones_like(snr)

    probe = AttributeProbe(text.config.hidden_size)
    ckroot = a.root / "t2i"
    start = 0
    mods = {"unet": unet, "text": text, "ema_unet": ema_unet.shadow, "ema_text": ema_text.shadow}
    if a.probe_weight > 0:
        mods["probe"] = probe
    ck = latest_checkpoint(ckroot)
    # The probe's parameters are a second optimizer group; checkpoints from before the probe
    # existed have one group, so the group is added after loading those.
    probe_in_ck = ck is not None and (ck / "probe.safetensors").exists()
    if a.probe_weight > 0 and probe_in_ck:
        opt.add_param_group({"params": list(probe.parameters())})
    if ck is not None:
        load_mods = {k: v for k, v in mods.items() if k != "probe" or probe_in_ck}
        start = load_checkpoint(ck, load_mods, opt)["step"]
        print(f"resumed from {ck} (step {start})", flush=True)
    if a.probe_weight > 0 and not probe_in_ck:
        opt.add_param_group({"params": list(probe.parameters()), "weight_decay": 0.0})
    if a.export_only:
        ema_unet.copy_to(unet)
        ema_text.copy_to(text)
        export_pipeline(unet, text, vae, tokenizer, a.out, {"training_steps": start})
        print(f"exported step {start} to {a.out}", flush=True)
        return

    t0, running, probe_running = time.time(), [], []
    for step in range(start, min(a.steps, a.stop_at or a.steps)):
        rng = np.random.default_rng([a.seed, step])
        gen = torch.Generator().manual_seed(a.seed * 1_000_003 + step)
        idx = rng.integers(0, len(images), size=a.batch)
        captions, mentioned = [], torch.zeros(a.batch, len(ATTRIBUTES), dtype=torch.bool)
        for row, i in enumerate(idx):
            attrs = {attr: VALUES[attr][labels[i, k]] for k, attr in enumerate(ATTRIBUTES)}
            if rng.random() < CAPTION_DROPOUT:
                captions.append("")
                continue
            text_caption, said = random_caption_with_mentions(attrs, rng)
            captions.append(text_caption)
            mentioned[row] = torch.tensor([attr in said for attr in ATTRIBUTES])
        ids = tok(captions)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * sf
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (a.batch,), generator=gen)
        if a.timesteps == "high":
            t[: a.batch // 2] = torch.randint(500, 1000, (a.batch // 2,), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        target = sched.get_velocity(z0, noise, t)
        warm = min(1.0, (step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = float(a.lr * warm * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / a.steps))))
        hidden = text(ids)[0]
        pred = unet(zt, t, hidden).sample
        loss = (weight[t] * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        running.append(loss.item())
        if a.probe_weight > 0:
            batch_labels = torch.from_numpy(labels[idx])
            probe_loss = probe.loss(hidden, ids, tokenizer.eos_token_id, batch_labels, mentioned)
            probe_running.append(probe_loss.item())
            loss = loss + a.probe_weight * probe_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; last checkpoint kept in {ckroot}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text, step)
        if (step + 1) % 50 == 0:
            probe_text = f" probe {np.mean(probe_running):.3f}" if probe_running else ""
            print(f"t2i step {step + 1}/{a.steps} loss {np.mean(running):.4f}{probe_text} {time.time() - t0:.0f}s", flush=True)
            running, probe_running = [], []
        if (step + 1) % a.every == 0 or step + 1 in (a.steps, a.stop_at):
            save_checkpoint(ckroot, step + 1, mods, opt, {"seconds": time.time() - t0})
    if a.stop_at is not None and a.stop_at < a.steps:
        print(f"stopped at step {a.stop_at}", flush=True)
        return
    ema_unet.copy_to(unet)
    ema_text.copy_to(text)
    export_pipeline(unet, text, vae, tokenizer, a.out, {"training_steps": a.steps})
    print(f"exported to {a.out} after {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
