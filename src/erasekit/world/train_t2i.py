"""Train the Shapes world's text encoder + UNet jointly on VAE latents. Seeded, resumable.

    python -m erasekit.world.train_t2i --steps 7000 --out src/erasekit/world/assets/shapes

Recipe: v-prediction (the SD-2.x convention) with the plain v-MSE loss, 10%
caption dropout for classifier-free guidance, AdamW with warm-up and cosine
decay, EMA weights (those are exported).

The shipped run used min-SNR-5 weighting for its first 1750 steps; images then
followed the seed far more than the prompt (shape right in ~10%), because for
v-prediction min-SNR multiplies the loss of the high-noise steps, where shape
and colour are decided, by ~SNR (0.005-0.3).  From step 1750 on it used the
plain v-MSE (``--weighting uniform``, now the default).  At step 2250 it turned
out the UNet had 32 attention heads of 3-4 dims (diffusers reads
``attention_head_dim`` as a head count); it continued with 4 heads (same
tensors), see ``architecture.UNET_CONFIG``, and at step 2750 the schedule was
lengthened to 7000 steps to give the corrected model time to learn prompts.  Every batch is a pure function of
(seed, step), so a resumed run continues the same sequence of batches.
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
from .captions import random_caption
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
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT / "shapes")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_ROOT / "shapes" / "tokenizer")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--weighting", choices=["uniform", "min-snr"], default="uniform")
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
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    ema_unet, ema_text = EMA(unet, a.ema_decay), EMA(text, a.ema_decay)
    sched = build_scheduler()
    acp = sched.alphas_cumprod
    snr = acp / (1 - acp)
    if a.weighting == "min-snr":
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / (snr + 1)  # min-SNR for v-prediction
    else:
        weight = torch.ones_like(snr)

    ckroot = a.root / "t2i"
    start = 0
    if (ck := latest_checkpoint(ckroot)) is not None:
        mods = {"unet": unet, "text": text, "ema_unet": ema_unet.shadow, "ema_text": ema_text.shadow}
        start = load_checkpoint(ck, mods, opt)["step"]
        print(f"resumed from {ck} (step {start})", flush=True)
    if a.export_only:
        ema_unet.copy_to(unet)
        ema_text.copy_to(text)
        export_pipeline(unet, text, vae, tokenizer, a.out, {"training_steps": start})
        print(f"exported step {start} to {a.out}", flush=True)
        return

    t0, running = time.time(), []
    for step in range(start, min(a.steps, a.stop_at or a.steps)):
        rng = np.random.default_rng([a.seed, step])
        gen = torch.Generator().manual_seed(a.seed * 1_000_003 + step)
        idx = rng.integers(0, len(images), size=a.batch)
        captions = []
        for i in idx:
            attrs = {attr: VALUES[attr][labels[i, k]] for k, attr in enumerate(ATTRIBUTES)}
            captions.append("" if rng.random() < CAPTION_DROPOUT else random_caption(attrs, rng))
        ids = tok(captions)
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * sf
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (a.batch,), generator=gen)
        zt = sched.add_noise(z0, noise, t)
        target = sched.get_velocity(z0, noise, t)
        warm = min(1.0, (step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = float(a.lr * warm * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * step / a.steps))))
        pred = unet(zt, t, text(ids)[0]).sample
        loss = (weight[t] * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; last checkpoint kept in {ckroot}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text, step)
        running.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"t2i step {step + 1}/{a.steps} loss {np.mean(running):.4f} {time.time() - t0:.0f}s", flush=True)
            running = []
        if (step + 1) % a.every == 0 or step + 1 in (a.steps, a.stop_at):
            mods = {"unet": unet, "text": text, "ema_unet": ema_unet.shadow, "ema_text": ema_text.shadow}
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
