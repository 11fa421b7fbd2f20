"""The machine a benchmark runs on: library versions, CPU, threads, memory, GPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _memory_gb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def environment() -> dict:
    import torch

    from ...models.arithmetic import cpu_model
    from ...models.delta import library_versions

    return {
        "versions": library_versions(),
        "os": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "memory": _memory_gb(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)",
    }


def machine_line() -> str:
    """One line naming the hardware a cell's seconds and memory were measured on."""
    env = environment()
    return (f"{env['cpu']}, {env['logical_cpus']} logical CPUs, torch threads {env['torch_threads']}, "
            f"GPU {env['cuda']}")
