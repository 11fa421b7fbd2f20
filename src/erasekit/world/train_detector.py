"""Train the Shapes concept detector on augmented renders. Seeded, resumable.

    python -m erasekit.world.train_detector --out src/erasekit/world/assets/shapes/detector

Part of every batch is passed through the world's VAE (encode, perturb the
latent, decode) so the detector has seen decoder artefacts; the rest gets
strong augmentations (warps, blur, grain, tinted backgrounds).  Accuracy is
reported on fresh renders from a seed never used for training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .augment import augment
from .checkpoints import DEFAULT_ROOT, latest_checkpoint, load_checkpoint, save_checkpoint
from .dataset import cached_dataset, render_dataset, to_tensor_range
from .detector import ShapesDetector
from .vocabulary import ATTRIBUTES


@torch.no_grad()
def vae_roundtrip(vae_dir: Path, images: np.ndarray, seed: int) -> np.ndarray:
    """Encode/decode with latent noise: images that look like decoder outputs."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(images), 256):
        post = vae.encode(to_tensor_range(images[i : i + 256])).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen) * 2.0
        rec = vae.decode(z).sample.clamp(-1, 1)
        out.append(((rec + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


@torch.no_grad()
def accuracy(det: ShapesDetector, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    det.eval()
    probs = det.probabilities(images)
    det.train()
    return {a: float((probs[a].argmax(1).numpy() == labels[:, k]).mean()) for k, a in enumerate(ATTRIBUTES)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT / "shapes")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    images, labels = cached_dataset(a.root / "renders.npz", 30000, a.seed)
    n_rt = 8000
    rt_path = a.root / "roundtrip.npz"
    if rt_path.exists():
        rt = np.load(rt_path, allow_pickle=False)["images"]
    else:
        rt = vae_roundtrip(a.root / "vae-final", images[:n_rt], a.seed)
        np.savez(rt_path, images=rt)
    test_images, test_labels = render_dataset(2000, seed=a.seed + 12345)

    det = ShapesDetector()
    opt = torch.optim.AdamW(det.parameters(), lr=a.lr, weight_decay=1e-4)
    ckroot = a.root / "detector"
    start = 0
    if (ck := latest_checkpoint(ckroot)) is not None:
        start = load_checkpoint(ck, {"detector": det}, opt)["step"]
        print(f"resumed detector from {ck} (step {start})", flush=True)
    t0 = time.time()
    for step in range(start, a.steps):
        rng = np.random.default_rng([a.seed, step])
        gen = torch.Generator().manual_seed(a.seed * 1_000_003 + step)
        half = a.batch // 2
        i_clean = rng.integers(0, len(images), size=a.batch - half)
        i_rt = rng.integers(0, n_rt, size=half)
        x = torch.cat([to_tensor_range(images[i_clean]), to_tensor_range(rt[i_rt])])
        y = torch.from_numpy(np.concatenate([labels[i_clean], labels[i_rt]]))
        x = augment(x, gen)
        for g in opt.param_groups:
            g["lr"] = float(a.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / a.steps)))
        logits = det(x)
        loss = sum(F.cross_entropy(logits[attr], y[:, k], label_smoothing=0.05) for k, attr in enumerate(ATTRIBUTES))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"detector step {step + 1}/{a.steps} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % a.every == 0 or step + 1 == a.steps:
            save_checkpoint(ckroot, step + 1, {"detector": det}, opt)
    acc = accuracy(det, test_images, test_labels)
    rt_acc = accuracy(det, vae_roundtrip(a.root / "vae-final", test_images[:500], a.seed + 1), test_labels[:500])
    print(f"fresh-render accuracy {acc}; through the VAE {rt_acc}; {time.time() - t0:.0f}s", flush=True)
    det.eval()
    det.save(a.out)


if __name__ == "__main__":
    main()
