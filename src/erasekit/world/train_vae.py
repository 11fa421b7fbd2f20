"""Train the Shapes world's AutoencoderKL (64x64x3 <-> 16x16x4). Seeded and resumable.

    python -m erasekit.world.train_vae --steps 3000

Measured on 2 CPU cores: see ``scripts/train_world.sh`` for the wall time of the shipped run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .architecture import build_vae
from .checkpoints import DEFAULT_ROOT, latest_checkpoint, load_checkpoint, save_checkpoint
from .dataset import cached_dataset, to_tensor_range


FOREGROUND_WEIGHT = 10.0


def train_vae(steps: int, batch: int, lr: float, kl_weight: float, seed: int, root: Path, every: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    images, _ = cached_dataset(root / "renders.npz", 30000, seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    ckroot = root / "vae"
    start = 0
    if (ck := latest_checkpoint(ckroot)) is not None:
        start = load_checkpoint(ck, {"vae": vae}, opt)["step"]
        print(f"resumed VAE from {ck} (step {start})", flush=True)
    t0 = time.time()
    for step in range(start, steps):
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, len(images), size=batch)
        x = to_tensor_range(images[idx])
        for g in opt.param_groups:
            g["lr"] = float(lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / steps))))
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        # Objects cover a small part of the image: weight pixels that differ from the
        # background (read at the corner, which objects never reach) so that thin
        # coloured strokes keep their colour through the autoencoder.
        fg = ((x - x[:, :, :1, :1]).abs().sum(dim=1, keepdim=True) > 0.1).float()
        w = 1.0 + FOREGROUND_WEIGHT * fg
        rec_loss = (w * ((rec - x).abs() + (rec - x) ** 2)).mean() / w.mean()
        kl = post.kl().mean() / z[0].numel()
        loss = rec_loss + kl_weight * kl
        if not torch.isfinite(loss):
            raise FloatingPointError(f"VAE loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if (step + 1) % 50 == 0:
            print(f"vae step {step + 1}/{steps} rec {rec_loss.item():.4f} kl {kl.item():.3f} "
                  f"{time.time() - t0:.0f}s", flush=True)
        if (step + 1) % every == 0 or step + 1 == steps:
            save_checkpoint(ckroot, step + 1, {"vae": vae}, opt)
    return vae


@torch.no_grad()
def latent_scaling_factor(vae, images: np.ndarray, n: int = 2048) -> float:
    x = to_tensor_range(images[:n])
    z = torch.cat([vae.encode(x[i : i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    return float(1.0 / z.std())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT / "shapes")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--out", type=Path, default=None, help="save the final VAE here (save_pretrained)")
    a = ap.parse_args()
    vae = train_vae(a.steps, a.batch, a.lr, a.kl_weight, a.seed, a.root, a.every)
    images, _ = cached_dataset(a.root / "renders.npz", 30000, a.seed)
    sf = latent_scaling_factor(vae, images)
    vae.register_to_config(scaling_factor=sf)
    out = a.out or a.root / "vae-final"
    vae.save_pretrained(out)
    print(f"saved VAE to {out}, scaling_factor {sf:.4f}", flush=True)


if __name__ == "__main__":
    main()
