"""Which floating-point arithmetic produced a delta's bytes: the CPU model and torch's kernel level.

A delta id hashes the bytes of the weights a method wrote.  The same code, config, seed and thread
count give the same bytes on one kind of CPU, but another CPU (another vendor, or another vector
instruction set: torch picks AVX-512, AVX2 or other kernels at run time) rounds differently, so its
ids differ while every measured rate stays the same.  A stored id is therefore comparable only on a
machine with the same `signature`.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def signature() -> str:
    """``"<CPU model> / <torch CPU kernel level>"``, e.g. ``"Intel(R) Xeon(R) Processor / AVX512"``."""
    return f"{cpu_model()} / {torch.backends.cpu.get_cpu_capability()}"


def same_arithmetic(stored: str, here: str | None = None) -> bool:
    """Whether ids recorded under ``stored`` are comparable with ids made under ``here`` (default: this
    machine).  A signature recorded before the kernel level was (``"<CPU model> / unknown"``) matches
    on the model alone."""
    (model_a, _, level_a), (model_b, _, level_b) = stored.rpartition(" / "), (here or signature()).rpartition(" / ")
    return model_a == model_b and (level_a == level_b or "unknown" in (level_a, level_b))
