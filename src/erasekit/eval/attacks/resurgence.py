"""Concept resurgence: does an erased concept come back after brief benign fine-tuning?

The erased model (base + delta) is fine-tuned for ``steps`` steps with the plain
diffusion training loss on benign (image latent, caption) pairs that never show
nor name the target -- Shapes renders of the OTHER values of the target's
attribute (`erasekit.world.render`, captions from the world's grammar), or an
image folder with captions -- and the target rate is measured before and after.

Only the delta's UNet tensors are trained by default (``scope="delta"``; any
registered scope name works), through the shared `Trainer`
(`erasekit.training`).  The delta object and its files are never
changed: training runs on the pipeline's live weights, which are restored
afterwards (the pipeline is left as found), and the delta folder's files are
hashed before and after.  The fine-tuned weights can be saved as a new delta on
the base model (``OUT/resurged``) for `erasekit eval --delta`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ...concepts.spec import ConceptSpec
from ...generation import SamplingSettings
from ...models.delta import MANIFEST_FILE, TENSORS_FILE, WeightDelta, resolve_tensors, snapshot
from ...models.scopes import ParameterScope, get_scope
from ...models.unet_io import predict
from ...training import MethodConfig, Trainer, randint
from .. import atomic
from .budget import Budget, count_calls
from .common import _generate_rows, model_state
from .unlearndiff import training_target

RESULT_FILE = "resurgence.json"
RESURGED_DIR = "resurged"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ResurgenceConfig(MethodConfig):
    """Settings of the resurgence run.

    Defaults: 200 steps, lr 1e-5, batch 4, 512 benign images (a brief SD
    fine-tune).  ``shapes`` preset: 40 steps, lr 1e-4, batch 8, 256 renders,
    16 target prompts per wording tier.
    """

    steps: int = 200
    lr: float = 1e-5
    batch_size: int = 4
    scope: str = "delta"
    n_images: int = 512
    data: str | None = None
    n_eval: int = 16
    save_delta: bool = True

    PRESETS: ClassVar[dict[str, dict]] = {"shapes": dict(steps=40, lr=1e-4, batch_size=8, n_images=256)}


@dataclass
class ResurgenceResult:
    concept: str
    target_rate_before: dict[str, float]
    target_rate_after: dict[str, float]
    losses: list[float]
    settings: dict[str, Any]
    budget: dict[str, Any]
    seconds: float
    delta: dict[str, Any] | None = None
    delta_files_unchanged: bool | None = None
    data: dict[str, Any] = field(default_factory=dict)
    resurged_delta: str | None = None

    @property
    def mean_before(self) -> float:
        return float(np.mean(list(self.target_rate_before.values())))

    @property
    def mean_after(self) -> float:
        return float(np.mean(list(self.target_rate_after.values())))

    def to_dict(self) -> dict[str, Any]:
        return {"format": "erasekit-resurgence", "format_version": 1, **asdict(self),
                "target_rate_mean_before": self.mean_before, "target_rate_mean_after": self.mean_after}


# ------------------------------------------------------------------ benign data
def shapes_benign_data(value: str, n: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """``n`` renders whose target attribute is never ``value``, with captions that never name it."""
    from ...world.captions import random_caption
    from ...world.render import render, sample_scene
    from ...world.vocabulary import VALUES, load_vocabulary

    attribute = load_vocabulary().attribute_of(value)
    others = [v for v in VALUES[attribute] if v != value]
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for k in range(n):
        scene = sample_scene(rng, **{attribute: others[k % len(others)]})
        images.append(np.asarray(render(scene)))
        captions.append(random_caption(scene.attributes(), rng))
    return images, captions


def folder_data(folder: str | Path, n: int, size: int) -> tuple[list[np.ndarray], list[str]]:
    """Images and captions of a folder with ``metadata.csv`` or ``metadata.jsonl`` (``file_name``, ``text``)."""
    import csv

    from PIL import Image

    folder = Path(folder)
    if (folder / "metadata.jsonl").is_file():
        records = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line.strip()]
    elif (folder / "metadata.csv").is_file():
        with open(folder / "metadata.csv", newline="", encoding="utf-8") as fh:
            records = list(csv.DictReader(fh))
    else:
        raise ValueError(f"{folder}: needs metadata.csv or metadata.jsonl with columns file_name, text")
    records = [r for r in records if Path(r.get("file_name", "")).suffix.lower() in IMAGE_SUFFIXES][:n]
    if not records or any("text" not in r for r in records):
        raise ValueError(f"{folder}: no image rows with file_name and text")
    images = [np.asarray(Image.open(folder / r["file_name"]).convert("RGB").resize((size, size))) for r in records]
    return images, [r["text"] for r in records]


@torch.no_grad()
def encode_images(vae, images: list[np.ndarray], batch_size: int = 64) -> torch.Tensor:
    """Scaled latents (posterior means) of uint8 HWC images."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack(images[i : i + batch_size])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out.append(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out)


# ------------------------------------------------------------------ measuring
def target_rows(concept: ConceptSpec, n: int, shapes_world: bool) -> list[tuple[str, str, int]]:
    """(tier, prompt, seed) rows of the target: Shapes wording tiers, else the spec's target prompts."""
    from .run import shapes_value

    value = shapes_value(concept) if shapes_world else None
    if value is not None:
        from ..plan import shapes_target_rows

        return [(r.tier, r.prompt, r.seed) for r in shapes_target_rows(value, n)]
    prompts = concept.target_prompts()
    return [("target", prompts[k % len(prompts)], k) for k in range(n)]


def target_rates(pipe, rows, detector, detector_concept: str, settings: SamplingSettings) -> dict[str, float]:
    images = _generate_rows(pipe, [r[1] for r in rows], [r[2] for r in rows], [None] * len(rows), settings)
    decisions = detector.detect(images, detector_concept).decisions
    tiers = list(dict.fromkeys(r[0] for r in rows))
    return {t: float(np.mean([d for d, r in zip(decisions, rows) if r[0] == t])) for t in tiers}


def files_digest(folder: str | Path) -> dict[str, str]:
    """sha256 of a delta folder's two files."""
    folder = Path(folder)
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in (TENSORS_FILE, MANIFEST_FILE)
            if (folder / f).is_file()}


def delta_scope(delta: WeightDelta) -> ParameterScope:
    """A scope selecting exactly the delta's UNet tensors."""
    names = {n[len("unet."):] for n in delta.names if n.startswith("unet.")}
    if not names:
        raise ValueError(f"delta {delta.delta_id} changes no UNet tensor; choose a scope (e.g. cross_attn)")
    return ParameterScope(f"delta-{delta.delta_id}", lambda site: site.name in names, "the delta's UNet tensors")


# ------------------------------------------------------------------ the run
def run_resurgence(pipe, delta: WeightDelta | None, concept: ConceptSpec | str,
                   config: ResurgenceConfig | dict[str, Any] | None = None, *, detector=None,
                   detector_concept: str | None = None, settings: SamplingSettings | None = None,
                   out: str | Path | None = None, delta_path: str | Path | None = None,
                   progress: Callable[[int], None] | None = None) -> ResurgenceResult:
    """Fine-tune base + ``delta`` on benign data, measure the target before/after; ``pipe`` is left as found."""
    from ...models.loading import is_shapes_world
    from .run import _concept, _delta_info, default_detector, shapes_value

    spec = _concept(concept)
    shapes_world = is_shapes_world(pipe)
    if not isinstance(config, ResurgenceConfig):
        config = ResurgenceConfig.for_world("shapes" if shapes_world else "sd", **(config or {}))
    if out is not None and delta_path is not None and Path(out).resolve() == Path(delta_path).resolve():
        raise ValueError("the output folder must not be the delta's folder (the delta is never rewritten)")
    settings = settings or SamplingSettings()
    if detector is None:
        detector, auto = default_detector(spec, shapes_world)
        detector_concept = detector_concept or auto
    detector_concept = detector_concept or shapes_value(spec) or spec.canonical
    digest_before = files_digest(delta_path) if delta_path else None
    t0 = time.perf_counter()

    value = shapes_value(spec)
    if config.data is not None:
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        images, captions = folder_data(config.data, config.n_images, size)
        source = {"kind": "folder", "path": config.data}
    elif shapes_world and value is not None:
        images, captions = shapes_benign_data(value, config.n_images, config.seed)
        source = {"kind": "shapes-renders", "excluded_value": value}
    else:
        raise ValueError("benign data: pass config data=<image folder with metadata.csv/jsonl> for this model")
    latents = encode_images(pipe.vae, images).to(pipe.unet.device)
    from ...models.text import encode_prompts

    cond = encode_prompts(pipe, captions)
    rows = target_rows(spec, config.n_eval, shapes_world)
    scope = delta_scope(delta) if config.scope == "delta" and delta is not None else get_scope(
        "cross_attn" if config.scope == "delta" else config.scope)
    budget = Budget(config.steps, unit="fine-tuning steps")
    unet, scheduler = pipe.unet, pipe.scheduler

    def step_fn(step: int, g: torch.Generator) -> torch.Tensor:
        budget.step()
        idx = torch.tensor([randint(len(latents), g) for _ in range(config.batch_size)])
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=g).to(z0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=g).to(z0.device)
        pred = predict(unet, scheduler.add_noise(z0, noise, t), t, cond[idx])
        return torch.nn.functional.mse_loss(pred.float(), training_target(scheduler, z0, noise, t).float())

    with model_state(pipe, delta, erased=False):
        names = ["unet." + n for n in scope.select(unet)]
        base_values = snapshot(pipe, names)
    with model_state(pipe, delta, erased=True):
        erased_values = snapshot(pipe, names)
        before = target_rates(pipe, rows, detector, detector_concept, settings)
        try:
            trainer = Trainer(unet, scope, config.steps, lr=config.lr, seed=config.seed, progress=False,
                              description="resurgence")
            with count_calls(budget, unet=unet):
                result = trainer.run(lambda s, g: _advance(step_fn(s, g), progress))
            after = target_rates(pipe, rows, detector, detector_concept, settings)
            resurged = WeightDelta.from_state_dicts(
                base_values, {n: t for n, t in resolve_tensors(pipe, names).items()}, method="resurgence",
                config={"resurgence": config.model_dump(), "from_delta": delta.delta_id if delta else None},
                seed=config.seed)
        finally:
            with torch.no_grad():
                for n, t in resolve_tensors(pipe, names).items():
                    t.copy_(erased_values[n])
    digest_after = files_digest(delta_path) if delta_path else None
    res = ResurgenceResult(
        concept=spec.name, target_rate_before=before, target_rate_after=after, losses=result.losses,
        settings={"resurgence": config.model_dump(), "scope": scope.name, "trainable_tensors": len(names),
                  "sampling": asdict(settings), "detector_concept": detector_concept},
        budget=budget.to_dict(), seconds=time.perf_counter() - t0, delta=_delta_info(delta, delta_path),
        delta_files_unchanged=None if delta_path is None else digest_before == digest_after,
        data={**source, "images": len(images), "example_captions": captions[:5]})
    if digest_before is not None and digest_before != digest_after:
        raise RuntimeError(f"the delta files in {delta_path} changed during the resurgence run")
    if out is not None:
        out = Path(out)
        if config.save_delta and resurged.names:
            resurged.save(out / RESURGED_DIR)
            res.resurged_delta = str(out / RESURGED_DIR)
        atomic.write_json(out / RESULT_FILE, res.to_dict())
    return res


def _advance(loss: torch.Tensor, progress: Callable[[int], None] | None) -> torch.Tensor:
    if progress is not None:
        progress(1)
    return loss
