"""Stage 2's denoising trajectories: sampled once with the original model, cached in safetensors.

`load_or_sample` returns the cached latents of the malicious prompts (steps 0..``max_step``) and
of unconditional runs (every step) when the file's key matches, and samples and writes them
otherwise.  The key hashes the UNet's tensors, the text conditioning, the prompts, the seed and
the sampling settings; the file is never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

from ...models.conditioning import encode_conditions
from ...models.ddim import DDIMSampler
from ...models.delta import fingerprint
from ...models.unet_io import latent_shape
from ...training import step_generator
from ...training.checkpoints import save_tensors_atomic
from ..preservation import text_fingerprint

if TYPE_CHECKING:
    from .visual import TRCEVisualConfig

log = logging.getLogger(__name__)

CACHE_FORMAT = "erasekit-trce-trajectories"


class TrajectoryCache:
    """Sampled latents: ``cond`` (n, max_step+1, C, H, W), ``uncond`` (n_uncond, n_steps, C, H, W),
    ``prompt_index`` (n,).  File-backed caches read single latents lazily."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None, path: Path | None = None):
        self.path, self._tensors, self._fh = path, tensors, None
        if tensors is None:
            self._fh = safe_open(str(path), framework="pt")
        self.prompt_index = self._get("prompt_index")
        self.n = int(self.prompt_index.shape[0])
        self.n_uncond = int(self._shape("uncond")[0])

    def _get(self, name: str) -> torch.Tensor:
        return self._tensors[name] if self._tensors is not None else self._fh.get_tensor(name)

    def _shape(self, name: str) -> list[int]:
        return list(self._tensors[name].shape) if self._tensors is not None else self._fh.get_slice(name).get_shape()

    def latent(self, name: str, i: int, s: int) -> torch.Tensor:
        """(1, C, H, W) latent of trajectory i at step s (name 'cond' or 'uncond')."""
        if self._tensors is not None:
            return self._tensors[name][i, s].unsqueeze(0)
        return self._fh.get_slice(name)[i : i + 1, s : s + 1][:, 0]


def unet_fingerprint(unet) -> str:
    h = hashlib.sha256()
    for n, t in sorted(unet.state_dict().items()):
        h.update(f"{n}:{fingerprint(t)}".encode())
    return h.hexdigest()


def cache_key(pipe, prompts: list[str], config: "TRCEVisualConfig") -> str:
    payload = {
        "format": CACHE_FORMAT, "unet": unet_fingerprint(pipe.unet), "text": text_fingerprint(pipe),
        "prompts": prompts, "seed": config.seed, "n": config.n_trajectories, "n_uncond": config.n_uncond,
        "n_steps": config.n_steps, "max_step": config.max_step, "guidance": config.guidance,
        "scheduler": dict(pipe.scheduler.config), "shape": list(latent_shape(pipe.unet)),
    }
    if config.pairing == "release":  # one more latent per trajectory (the one after the last step used)
        payload["pairing"] = "release"
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


@torch.no_grad()
def sample_trajectories(pipe, prompts: list[str], config: "TRCEVisualConfig") -> dict[str, torch.Tensor]:
    """Sample the trajectories with the pipeline's CURRENT (original) UNet; every kept latent, on CPU."""
    unet, bs = pipe.unet, max(1, config.sample_batch)
    sampler = DDIMSampler(pipe.scheduler, config.n_steps)
    if not 0 <= config.max_step < config.n_steps:
        raise ValueError(f"max_step {config.max_step} must lie in 0..{config.n_steps - 1}")
    after = int(config.pairing == "release")  # also keep the latent after the last step a sample may use
    g = step_generator(config.seed, -1)  # a stream of its own, apart from the training steps
    order = torch.randperm(len(prompts), generator=g)
    index = torch.stack([order[i % len(prompts)] for i in range(config.n_trajectories)])
    embeds, uncond = encode_conditions(pipe, prompts), encode_conditions(pipe, [""])
    cond, unc = [], []
    for lo in range(0, config.n_trajectories, bs):
        idx = index[lo : lo + bs]
        z = torch.randn(latent_shape(unet, len(idx)), generator=g).to(unet.device, unet.dtype)
        cond.append(sampler.denoise(unet, z, 0, config.max_step + after, embeds[idx.to(embeds.device)], uncond,
                                    config.guidance, keep_all=True)[1].cpu())
    for lo in range(0, config.n_uncond, bs):
        z = torch.randn(latent_shape(unet, min(bs, config.n_uncond - lo)), generator=g).to(unet.device, unet.dtype)
        unc.append(sampler.denoise(unet, z, 0, config.n_steps - 1 + after, None, uncond, 1.0, keep_all=True)[1].cpu())
    return {"cond": torch.cat(cond), "uncond": torch.cat(unc), "prompt_index": index}


def load_or_sample(pipe, prompts: list[str], config: "TRCEVisualConfig") -> TrajectoryCache:
    """Reuse the cache named by ``config.trajectory_cache`` when its key matches, else sample (and store)."""
    if config.n_trajectories < 1 or config.n_uncond < 1 or config.pres_batch < 1:
        raise ValueError("TRCE stage 2 needs n_trajectories, n_uncond and pres_batch >= 1")
    key = cache_key(pipe, prompts, config)
    path = None
    if config.trajectory_cache:
        path = Path(config.trajectory_cache).expanduser()
        if path.suffix != ".safetensors":
            path = path / f"trce-trajectories-{key}.safetensors"
        if path.exists():
            try:
                with safe_open(str(path), framework="pt") as fh:
                    meta = fh.metadata() or {}
                if meta.get("format") == CACHE_FORMAT and meta.get("key") == key:
                    log.info("reusing TRCE trajectories from %s", path)
                    return TrajectoryCache(path=path)
                log.warning("trajectory cache %s was made for another model/prompts/settings; resampling", path)
            except Exception as err:  # unreadable file: resample over it
                log.warning("trajectory cache %s is unreadable (%s); resampling", path, str(err).splitlines()[0])
    tensors = sample_trajectories(pipe, prompts, config)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": CACHE_FORMAT, "key": key, "prompts": json.dumps(prompts),
                "settings": json.dumps({k: getattr(config, k) for k in
                                        ("seed", "n_trajectories", "n_uncond", "n_steps", "max_step", "guidance")})}
        save_tensors_atomic(tensors, meta, path)
    return TrajectoryCache(tensors=tensors)


# ------------------------------------------------------------------ one iteration
