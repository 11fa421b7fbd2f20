"""Types and steps every prompt attack shares.

- `AttackCase`: one prompt of the target concept with its evaluation seed (the
  attack's starting point, UnlearnDiffAtk's "case").
- `FoundPrompt` / `AttackResult`: the discrete prompts an attack outputs, their
  success, settings, budget and time; `AttackResult.write` puts them in
  ``adversarial.csv`` (the common benchmark layout: ``case_number, prompt,
  evaluation_seed, evaluation_guidance``, plus ``source_prompt``) and
  ``attack.json``, atomically.  ``erasekit eval --adversarial OUT/adversarial.csv``
  (or ``--benchmark OUT/adversarial.csv``) evaluates them as tier ``adversarial``.
- `model_state`: switch a pipeline to the base model (delta reverted) or the
  erased one (delta applied) for a block, and back to how it was found.
- `judge_prompts`: success = the detector finds the concept in the image drawn
  from a found prompt with its case's seed.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...generation import SamplingSettings
from ...models.delta import WeightDelta, apply_delta, revert_delta
from .. import atomic

PROMPTS_FILE = "adversarial.csv"
RESULT_FILE = "attack.json"
CSV_COLUMNS = ("case_number", "prompt", "evaluation_seed", "evaluation_guidance", "source_prompt")


@dataclass(frozen=True)
class AttackCase:
    """A prompt of the target concept and the seed its images are drawn with."""

    case_number: int
    prompt: str
    seed: int
    guidance: float | None = None


@dataclass
class FoundPrompt:
    """One discrete prompt found by an attack for one case."""

    case_number: int
    prompt: str
    seed: int
    token_ids: list[int]
    source_prompt: str
    loss: float | None
    guidance: float | None = None
    success: bool | None = None
    score: float | None = None


@dataclass
class AttackResult:
    """Everything an attack run reports; ``success_rate`` is over the found prompts."""

    attack: str
    concept: str
    detector_concept: str
    found: list[FoundPrompt]
    settings: dict[str, Any]
    budget: dict[str, Any]
    seconds: float
    model: str | None = None
    delta: dict[str, Any] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    detector: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def success_rate(self) -> float | None:
        judged = [f.success for f in self.found if f.success is not None]
        return sum(judged) / len(judged) if judged else None

    @property
    def prompts(self) -> list[str]:
        return [f.prompt for f in self.found]

    def to_dict(self) -> dict[str, Any]:
        return {"format": "erasekit-attack", "format_version": 1, "attack": self.attack, "concept": self.concept,
                "detector_concept": self.detector_concept, "success_rate": self.success_rate,
                "n_prompts": len(self.found), "model": self.model, "delta": self.delta, "settings": self.settings,
                "budget": self.budget, "seconds": self.seconds, "sampling": self.sampling,
                "detector": self.detector, "notes": self.notes, "prompts_file": PROMPTS_FILE,
                "cases": [asdict(f) for f in self.found]}

    def csv_text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for f in self.found:
            writer.writerow([f.case_number, f.prompt, f.seed, "" if f.guidance is None else f.guidance,
                             f.source_prompt])
        return buf.getvalue()

    def write(self, out: str | Path) -> dict[str, Path]:
        """``adversarial.csv`` and ``attack.json`` in ``out`` (each written atomically)."""
        out = Path(out)
        return {"prompts": atomic.write_text(out / PROMPTS_FILE, self.csv_text()),
                "result": atomic.write_json(out / RESULT_FILE, self.to_dict())}


# ------------------------------------------------------------------ model state
def is_applied(pipe, delta: WeightDelta) -> bool:
    return not delta.mismatches(pipe, "new")


@contextlib.contextmanager
def model_state(pipe, delta: WeightDelta | None, erased: bool) -> Iterator[None]:
    """Inside the block ``pipe`` is the erased model (``erased``) or the base model; restored on exit."""
    if delta is None or not delta.names:
        yield
        return
    was_applied = is_applied(pipe, delta)
    if erased and not was_applied:
        apply_delta(pipe, delta)
    elif not erased and was_applied:
        revert_delta(pipe, delta)
    try:
        yield
    finally:
        if is_applied(pipe, delta) != was_applied:
            (apply_delta if was_applied else revert_delta)(pipe, delta)


# ------------------------------------------------------------------ images and latents
@torch.no_grad()
def generate_latents(pipe, prompts: list[str], seeds: list[int], settings: SamplingSettings,
                     guidance: list[float | None] | None = None) -> torch.Tensor:
    """Final (scaled) latents of the images `generate` would draw, one per (prompt, seed)."""
    out = []
    guidance = guidance or [None] * len(prompts)
    for i in range(len(prompts)):  # one call per image: per-row guidance, and independent of batching
        g = torch.Generator(device="cpu").manual_seed(int(seeds[i]))
        scale = guidance[i] if guidance[i] is not None else settings.guidance_scale
        kwargs = dict(num_inference_steps=settings.steps, guidance_scale=scale, generator=[g], output_type="latent")
        if settings.height:
            kwargs.update(height=settings.height, width=settings.width or settings.height)
        out.append(pipe(prompt=[prompts[i]], **kwargs).images)
    return torch.cat(out)


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor):
    """PIL images of (scaled) latents, as the pipeline would output them."""
    images = pipe.vae.decode(latents.to(pipe.vae.device, pipe.vae.dtype) / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(images, output_type="pil")


def _generate_rows(pipe, prompts: list[str], seeds: list[int], guidance: list[float | None],
                   settings: SamplingSettings) -> list:
    """Images in row order through the one generation path (`erasekit.eval.generate.draw`)."""
    from ..benchmarks import BenchmarkRow
    from ..generate import draw

    return draw(pipe, [BenchmarkRow(p, s, g, k) for k, (p, s, g) in enumerate(zip(prompts, seeds, guidance))], settings)


def judge_prompts(pipe, found: list[FoundPrompt], detector, detector_concept: str,
                  settings: SamplingSettings) -> None:
    """Draw each found prompt with its seed on ``pipe`` as it is; set ``success`` and ``score``."""
    if not found:
        return
    images = _generate_rows(pipe, [f.prompt for f in found], [f.seed for f in found], [f.guidance for f in found],
                            settings)
    detection = detector.detect(images, detector_concept)
    for f, s, d in zip(found, detection.scores, detection.decisions):
        f.score, f.success = float(s), bool(d)


def make_judge(pipe, detector, detector_concept: str, settings: SamplingSettings):
    """``judge(prompts, seeds, guidance) -> successes`` on ``pipe`` as it is at call time."""

    def judge(prompts: list[str], seeds: list[int], guidance: list[float | None]) -> list[bool]:
        images = _generate_rows(pipe, prompts, seeds, guidance, settings)
        return [bool(d) for d in detector.detect(images, detector_concept).decisions]

    return judge


def sampling_dict(settings: SamplingSettings) -> dict[str, Any]:
    return asdict(settings)
