"""Seconds per step and peak GPU memory of each method's SD preset on a full-size SD pipeline, beside the estimate.

    python benchmarks/sd_scale.py --model sd15 --device cuda --out benchmarks/results/sd-scale/h200
    python benchmarks/sd_scale.py --model tiny-sd1 --device cpu --iterations 2   # the same code path, in seconds

The pipeline has the real architecture of ``--model`` (UNet, CLIP text encoder(s) and VAE configs of
`erasekit.models.cost`, the shipped CLIP tokenizer) with random weights built in code: no download.
With ``--clip random`` a randomly initialised CLIP ViT-L/14 is written to a temporary folder and given
as ``clip_model``, so TRuST's clip scorer (VAE decode + CLIP image tower per saliency sample) costs
what it costs with real weights.  Random weights make the erasures meaningless; only cost is measured.

Each method runs its SD preset with the iteration budget cut to ``--iterations`` and its one-off
sampling cut (``pool_size``/``retain_pool_size`` to ``--pool``, ``n_trajectories`` and ``n_uncond`` to ``--trajectories``);
an entry ``method{json}`` adds overrides (``trust{"mixed_precision": "bf16"}``).  Columns:

- ``steps``: training steps run (calls of the step function inside `Trainer.run`);
- ``setup s``: the erasure's seconds outside training (encoding, pools, trajectories, static masks);
- ``s/step``: seconds per training step (device synchronised);
- ``estimate s/step``: `erasekit erase --dry-run`'s estimate for the same config (calibrated on an RTX 4090);
- ``peak GiB``: ``torch.cuda.max_memory_allocated`` over the erasure; ``reserved GiB`` what the
  allocator held; ``estimate GiB``: the dry-run's peak (it adds a fixed 0.8 GiB for the CUDA context);
- ``exact``: after the erasure the model holds its base tensors, and the delta applies to its new tensors and
  reverts to the base ones, bit for bit.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from erasekit.concepts.packs import get_concept
from erasekit.methods.base import get_method
from erasekit.methods.estimate import estimate, method_work
from erasekit.models.cost import KNOWN_MODELS
from erasekit.models.delta import apply_delta, revert_delta
from erasekit.training import trainer as trainer_module

GIB = 1024**3
TINY_ESTIMATE = {"tiny-sd1": "sd15", "tiny-sd2": "sd21", "tiny-sdxl": "sdxl"}  # the estimate a tiny run is shown with
CUT_FIELDS = {"pool_size": "pool", "retain_pool_size": "pool", "n_trajectories": "trajectories", "n_uncond": "trajectories",
              "preserve_pool_size": "pool"}
DEFAULT_METHODS = ["trust", 'trust{"csr_hessian": "finite-difference"}', "salun", "salun++", "esd-x", "esd-u",
                   "kscu", "trce", "uce", "trce-t", 'trust{"gradient_checkpointing": true}',
                   'trust{"mixed_precision": "bf16", "gradient_checkpointing": true}',
                   'esd-u{"mixed_precision": "bf16", "gradient_checkpointing": true}']


def _clean(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def full_size_pipeline(model: str, device: str):
    """A randomly initialised pipeline with ``model``'s real configs (``sd15``, ``sd21`` or ``sdxl``)."""
    import transformers
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    from erasekit.models.tiny import DEFAULT_PREDICTION, SD_SCHEDULER_CONFIG, _tiny_tokenizer

    spec = KNOWN_MODELS[model]
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**_clean(spec.unet)).eval()
        encoders = [getattr(transformers, cls_name)(CLIPTextConfig(**config)).eval()
                    for cls_name, config in spec.text_encoders]
        vae = AutoencoderKL(**_clean(spec.vae)).eval()
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG, prediction_type=DEFAULT_PREDICTION[spec.family])
    if spec.family == "sdxl":  # CLIP ViT-L, then OpenCLIP bigG with its projection; the second pads with '!'
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=_tiny_tokenizer(), tokenizer_2=_tiny_tokenizer(pad_token="!"),
                                         unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
                                         add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoders[0],
                                       tokenizer=_tiny_tokenizer(pad_token="!" if spec.family == "sd2" else None),
                                       unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_pipeline(model: str, device: str):
    if model.startswith("tiny-"):
        from erasekit.models.tiny import tiny_pipeline

        return tiny_pipeline(model.removeprefix("tiny-")).to(device)
    return full_size_pipeline(model, device)


def random_clip(folder: Path, tiny: bool) -> str:
    """Write a randomly initialised CLIP (ViT-L/14, or a tiny one) and the shipped tokenizer to ``folder``."""
    from transformers import CLIPConfig, CLIPModel

    from erasekit.models.tiny import _tiny_tokenizer

    if tiny:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8)
        proj = 32
    else:
        text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=224, patch_size=14)
        proj = 768
    torch.manual_seed(1)
    config = CLIPConfig(text_config={**text, "projection_dim": proj, "max_position_embeddings": 77},
                        vision_config={**vision, "projection_dim": proj}, projection_dim=proj)
    CLIPModel(config).save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)
    return str(folder)


class StepClock:
    """Wraps `Trainer.run` to time its steps (device-synchronised) and count them."""

    def __init__(self, device: torch.device):
        self.device, self.steps, self.seconds = device, 0, 0.0
        self.original = trainer_module.Trainer.run

    def sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __enter__(self):
        clock, original = self, self.original

        def run(trainer, step_fn):
            def counted(step, g):
                clock.steps += 1
                return step_fn(step, g)

            t = clock.sync()
            try:
                return original(trainer, counted)
            finally:
                clock.seconds += clock.sync() - t

        trainer_module.Trainer.run = run
        return self

    def __exit__(self, *exc):
        trainer_module.Trainer.run = self.original


def configured(method: str, overrides: dict, a) -> object:
    spec = get_method(method)
    fields = spec.config_cls.model_fields
    cut = {f: getattr(a, attr) for f, attr in CUT_FIELDS.items() if f in fields}
    if "iterations" in fields:
        cut["iterations"] = a.iterations
    if "iterations_by_kind" in fields:
        cut["iterations_by_kind"] = {}
    if "progress" in fields:
        cut["progress"] = False
    if "clip_model" in fields and a.clip_model:
        cut["clip_model"] = a.clip_model
    return spec.config_cls(**{**cut, **overrides})


def measure(pipe, method: str, overrides: dict, concept, a) -> dict:
    spec = get_method(method)
    cfg = configured(method, overrides, a)
    device = pipe.unet.device
    row = {"method": method, "overrides": overrides}
    try:
        est = estimate(method, a.model if not a.model.startswith("tiny-") else TINY_ESTIMATE[a.model], config=cfg,
                       kind=concept.kind, gpu_memory_gib=1e9)
        work = method_work(method, cfg, concept.kind)
        row.update(estimate_gib=est.peak_gib,
                   estimate_step_s=(est.train_seconds / work.iterations) if work.iterations and not work.closed_form
                   else None)
    except Exception as err:  # noqa: BLE001 - an estimate that fails is reported, the measurement still runs
        row["estimate_error"] = str(err).splitlines()[0][:200]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with StepClock(device) as clock:
        t = clock.sync()
        delta = spec.erase(pipe, concept, cfg)
        total = clock.sync() - t
    row.update(steps=clock.steps, total_s=total, setup_s=total - clock.seconds,
               step_s=clock.seconds / clock.steps if clock.steps else None,
               changed_params=sum(t.numel() for t in delta.tensors.values()),
               scorer=delta.manifest.metrics.get("scorer"))
    if device.type == "cuda":
        row.update(peak_gib=torch.cuda.max_memory_allocated(device) / GIB,
                   reserved_gib=torch.cuda.max_memory_reserved(device) / GIB)
    restored = delta.mismatches(pipe, "base")  # a method leaves the model as it found it
    apply_delta(pipe, delta)
    applied = delta.mismatches(pipe, "new")
    revert_delta(pipe, delta)
    reverted = delta.mismatches(pipe, "base")
    row["exact"] = not (restored or applied or reverted)
    if not row["exact"]:
        row["exact_problems"] = (restored + applied + reverted)[:3]
    del delta
    return row


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(rows: list[dict], env: dict) -> str:
    head = ("| method | overrides | steps | setup s | s/step | estimate s/step | peak GiB | reserved GiB | "
            "estimate GiB | exact |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {_overrides(r)} | failed: {r['error']} |||||||")
            continue
        lines.append(f"| {r['method']} | {_overrides(r)} | {r['steps']} | {r['setup_s']:.1f} | {_f(r['step_s'], '.3f')} "
                     f"| {_f(r.get('estimate_step_s'), '.2f')} | {_f(r.get('peak_gib'), '.1f')} "
                     f"| {_f(r.get('reserved_gib'), '.1f')} | {_f(r.get('estimate_gib'), '.1f')} "
                     f"| {'yes' if r['exact'] else 'NO'} |")
    lines.append("")
    lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".")
    return "\n".join(lines) + "\n"


def _overrides(r: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sd15", help="sd15, sd21, sdxl, or tiny-sd1 / tiny-sd2 / tiny-sdxl (the code path on a CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--concept", default="sd/church")
    ap.add_argument("--method", nargs="+", default=DEFAULT_METHODS)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--pool", type=int, default=4, help="pool_size / retain_pool_size / preserve_pool_size")
    ap.add_argument("--trajectories", type=int, default=4, help="TRCE's n_trajectories")
    ap.add_argument("--clip", choices=("random", "none"), default="random",
                    help="random: a random CLIP for the clip scorer; none: scorers fall back as they do offline")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matrix products (off: true fp32)")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    t0 = time.perf_counter()
    pipe = build_pipeline(a.model, a.device)
    build_s = time.perf_counter() - t0
    env = {"model": a.model, "device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor() or "cpu",
           "torch": torch.__version__, "tf32": a.tf32, "iterations": a.iterations, "pool": a.pool,
           "trajectories": a.trajectories, "clip": a.clip, "concept": a.concept, "pipeline build s": round(build_s, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        a.clip_model = random_clip(Path(tmp) / "clip", a.model.startswith("tiny-")) if a.clip == "random" else None
        concept = get_concept(a.concept)
        rows = []
        for entry in a.method:
            name, brace, own = entry.partition("{")
            overrides = json.loads(brace + own) if brace else {}
            try:
                rows.append(measure(pipe, name, overrides, concept, a))
            except Exception as err:  # noqa: BLE001 - one method's failure is a row; the others still run
                rows.append({"method": name, "overrides": overrides,
                             "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"})
            print(json.dumps(rows[-1]), flush=True)
            if a.out is not None:
                _write(a.out, table(rows, env), {"env": env, "rows": rows})
    text = table(rows, env)
    print(text)
    if a.out is not None:
        _write(a.out, text, {"env": env, "rows": rows})


def _write(out: Path, text: str, data: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, body in ((".md", text), (".json", json.dumps(data, indent=1))):
        tmp = out.with_suffix(suffix + ".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(out.with_suffix(suffix))


if __name__ == "__main__":
    main()
