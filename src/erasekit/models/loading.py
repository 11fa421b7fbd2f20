"""Resolve a ``--model`` value to a diffusers pipeline.

``shapes`` is the shipped Shapes world; any other value is a local diffusers
folder, a single-file checkpoint, or a Hub id loaded with ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch

SHAPES_ID = "shapes"
from ..world.assets_paths import SHAPES_MODEL_DIR as SHAPES_DIR


class ModelNotFoundError(RuntimeError):
    """A model could not be resolved; the message is one line, meant for the user."""


def shapes_model_dir() -> Path:
    if not (SHAPES_DIR / "model_index.json").exists():
        raise ModelNotFoundError(
            f"the shipped Shapes model is missing from {SHAPES_DIR}; "
            "rebuild it with scripts/train_world.sh or reinstall erasekit"
        )
    return SHAPES_DIR


def resolve_model_path(model: str) -> str:
    """Return a loadable folder path or Hub id, after checking local candidates."""
    if model == SHAPES_ID:
        return str(shapes_model_dir())
    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "model_index.json").exists():
            raise ModelNotFoundError(f"{path} is a folder but not a diffusers pipeline (no model_index.json)")
        return str(path)
    return model


FAMILIES = ("sd1", "sd2", "sdxl")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class UnsupportedModelError(ModelNotFoundError):
    """The model loaded (or was found) but is not a family erasekit's methods support; one line."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[dtype]


# ------------------------------------------------------------------ which family is this?
def detect_family(pipe) -> str:
    """'sd1', 'sd2' or 'sdxl' for a loaded pipeline; `UnsupportedModelError` (one line) otherwise.

    SDXL: a UNet with ``addition_embed_type="text_time"`` (pooled text + time
    ids) and a second text encoder.  SD-1.x vs SD-2.x, by majority of three
    signs: the text encoder's activation (CLIP quick-GELU vs OpenCLIP GELU),
    the UNet's ``cross_attention_dim`` (768 vs 1024) and its transformer
    projections (conv vs ``use_linear_projection``); a tie is broken by the
    scheduler's ``prediction_type`` (v-prediction: SD-2.x).
    """
    name = type(pipe).__name__
    unet = getattr(pipe, "unet", None)
    if unet is None:
        kind = "transformer-based (SD3/Flux-style)" if getattr(pipe, "transformer", None) is not None else "UNet-less"
        raise UnsupportedModelError(f"{name} is a {kind} pipeline; erasekit supports UNet text-to-image pipelines "
                                    f"of the SD-1.x, SD-2.x and SDXL families")
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise UnsupportedModelError(f"{name} has a {type(unet).__name__}; erasekit supports UNet2DConditionModel "
                                    "pipelines of the SD-1.x, SD-2.x and SDXL families")
    cfg = unet.config
    if cfg.in_channels != cfg.out_channels:
        raise UnsupportedModelError(f"{name}'s UNet takes {cfg.in_channels} input channels for {cfg.out_channels} "
                                    "output channels (inpainting/depth/upscaling); only text-to-image UNets are supported")
    added = getattr(cfg, "addition_embed_type", None)
    if added == "text_time":
        if getattr(pipe, "text_encoder_2", None) is None:
            raise UnsupportedModelError(f"{name} has an SDXL UNet but no second text encoder (refiner-only "
                                        "pipelines are not supported)")
        return "sdxl"
    if added is not None:
        raise UnsupportedModelError(f"{name}'s UNet uses addition_embed_type={added!r}; supported: SD-1.x, SD-2.x, SDXL")
    encoder = getattr(pipe, "text_encoder", None)
    act = getattr(getattr(encoder, "config", None), "hidden_act", None)
    votes = [act == "gelu", cfg.cross_attention_dim == 1024, bool(cfg.use_linear_projection)]
    against = [act == "quick_gelu", cfg.cross_attention_dim == 768, not cfg.use_linear_projection]
    if sum(votes) != sum(against):
        return "sd2" if sum(votes) > sum(against) else "sd1"
    prediction = getattr(getattr(getattr(pipe, "scheduler", None), "config", None), "prediction_type", "epsilon")
    return "sd2" if prediction == "v_prediction" else "sd1"


def checkpoint_family(path: str | Path) -> str:
    """Family of a single-file ``.safetensors`` checkpoint, from its tensor NAMES only (no tensor is read).

    Original (CompVis/SGM) layouts: SDXL keeps its text encoders under
    ``conditioner.embedders``; SD-2.x has an OpenCLIP encoder
    (``cond_stage_model.model.``); SD-1.x a HF CLIP one
    (``cond_stage_model.transformer.``).  SD3/Flux-style transformer
    checkpoints are refused with `UnsupportedModelError`.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        keys = list(fh.keys())
    has = (lambda prefix: any(k.startswith(prefix) for k in keys))
    if has("conditioner.embedders.") or has("add_embedding.") or has("text_encoder_2."):
        return "sdxl"
    if has("model.diffusion_model.joint_blocks.") or has("double_blocks.") or has("joint_blocks.") \
            or has("transformer_blocks.0.attn.add_q_proj"):
        raise UnsupportedModelError(f"{path} is a transformer (SD3/Flux-style) checkpoint; erasekit supports "
                                    "SD-1.x, SD-2.x and SDXL UNets")
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer.") or has("model.diffusion_model."):
        return "sd1"
    raise UnsupportedModelError(f"cannot tell the model family of {path} from its tensor names; pass --family")


def _single_file_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def load_pipeline(model: str, device: str = "cpu", dtype: str | torch.dtype = torch.float32, pipeline_cls=None,
                  family: str | None = None, check_family: bool = True):
    """Load a text-to-image pipeline; failures raise ModelNotFoundError (or UnsupportedModelError) with one line.

    ``model``: 'shapes', a local diffusers folder, a single-file ``.safetensors``
    checkpoint (SD vs SDXL pipeline class from ``family`` or from the
    checkpoint's tensor names; pickled ``.ckpt`` files are refused), or a Hub
    id.  ``dtype``: a torch dtype or 'float32'/'bf16'/'fp16' (fine-tuning
    methods need float32 weights; use their ``mixed_precision`` for speed).
    With ``check_family`` the family is detected (`detect_family`) and must
    match ``family`` when that is given.
    """
    from diffusers import DiffusionPipeline

    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    dtype = parse_dtype(dtype)
    target = resolve_model_path(model)
    try:
        if Path(target).is_file():
            if Path(target).suffix != ".safetensors":
                raise ModelNotFoundError(f"{target}: only .safetensors single-file checkpoints are loaded "
                                         "(pickled .ckpt/.pt files can run code); convert it to safetensors first")
            cls = pipeline_cls or _single_file_class(family or checkpoint_family(target))
            pipe = cls.from_single_file(target, dtype=dtype)
        else:
            pipe = (pipeline_cls or DiffusionPipeline).from_pretrained(target, dtype=dtype)
    except (OSError, ValueError) as err:  # hub unreachable, missing files, bad repo id
        if Path(target).exists():
            raise ModelNotFoundError(f"could not load pipeline from {target}: {str(err).splitlines()[0]}") from err
        raise ModelNotFoundError(
            f"model {model!r} is not a local folder and could not be fetched from the Hub (offline?); "
            f"download it elsewhere and pass its local diffusers folder, e.g. --model /path/to/stable-diffusion-v1-5"
        ) from err
    if check_family:
        found = detect_family(pipe)
        if family is not None and found != family:
            raise UnsupportedModelError(f"{model} was given as family {family!r} but is a {found} model")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def is_shapes_world(pipe) -> bool:
    """True for the shipped Shapes pipeline (or an export of it), judged by its model card."""
    import json

    path = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    card = Path(str(path)) / "erasekit.json" if path else None
    if card is None or not card.exists():
        return False
    return json.loads(card.read_text()).get("name") == SHAPES_ID
