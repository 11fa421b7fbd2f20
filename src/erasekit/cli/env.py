"""`erasekit env`: what a bug report needs (versions, devices, threads), on stdout."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import typer

from .app import app

PACKAGES = ("erasekit", "torch", "diffusers", "transformers", "accelerate", "safetensors", "pydantic", "numpy")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_lines() -> list[str]:
    """``key: value`` lines: platform, python, package versions, torch's devices and threads."""
    import torch

    lines = [f"platform: {platform.platform()}", f"python: {sys.version.split()[0]} ({sys.executable})"]
    lines += [f"{p}: {_version(p)}" for p in PACKAGES]
    lines.append(f"erasekit location: {Path(__file__).resolve().parents[1]}")
    lines.append(f"torch build: {torch.__version__}, CUDA {torch.version.cuda or 'none'}")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        lines.append(f"cuda devices: {len(names)} ({'; '.join(names)})")
    else:
        lines.append("cuda devices: 0")
    mps = getattr(torch.backends, "mps", None)
    lines.append(f"mps available: {bool(mps and mps.is_available())}")
    lines.append(f"cpu count: {os.cpu_count()}")
    lines.append(f"torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})")
    lines += [f"{v}: {os.environ.get(v, 'unset')}" for v in THREAD_VARIABLES]
    return lines


@app.command("env")
def env():
    """Print versions, devices and threads (paste the output into a bug report)."""
    typer.echo("\n".join(environment_lines()))
