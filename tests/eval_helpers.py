"""Helpers shared by the evaluation tests (tiny models saved to temp folders, benchmark scripts loaded)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"
ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """The repository's script at ``relative`` (e.g. ``benchmarks/unnamed_rate.py``) as a module.

    The script's folder goes on ``sys.path``, as when Python runs the script, so its sibling imports resolve."""
    path = ROOT / relative
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def save_tiny_pipeline(folder: Path) -> Path:
    from erasekit.models.tiny import tiny_pipeline

    tiny_pipeline().save_pretrained(str(folder))
    return folder


def save_tiny_delta(folder: Path, pipe_folder: Path) -> Path:
    """A delta halving the tiny UNet's output conv (so erased images differ from the original)."""
    from erasekit.models.delta import WeightDelta, snapshot
    from erasekit.models.tiny import tiny_pipeline

    base = snapshot(tiny_pipeline(), ["unet.conv_out.weight"])
    WeightDelta.from_state_dicts(base, {k: v * 0.5 for k, v in base.items()}, method="test-scale",
                                 base_model=str(pipe_folder)).save(folder)
    return folder


def save_tiny_clip(folder: Path, projection_dim: int = 768) -> Path:
    """A tiny random CLIPModel (768-d projection, as Q16's prompts) with the shipped CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from erasekit.world.assets_paths import TOKENIZER_DIR

    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(cfg).eval()
    model.save_pretrained(str(folder))
    CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(str(folder))
    return folder
