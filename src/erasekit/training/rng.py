"""Per-step random streams: step ``k`` of a run draws from its own generator seeded by ``(seed, k)``.

Nothing about the RNG has to be checkpointed: a resumed run draws what an uninterrupted one draws.
"""

from __future__ import annotations

import torch

from ..models.digest import text_sha256_bytes


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator for step ``step`` of a run with ``seed`` (independent of any earlier step).

    ``rank`` > 0 is a data-parallel process's own stream; process 0 draws what a one-process run draws.
    """
    digest = text_sha256_bytes(f"erasekit:{seed}:{step}{f':rank{rank}' if rank else ''}")
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def randint(n: int, generator: torch.Generator) -> int:
    """Uniform integer in [0, n) from ``generator``."""
    return int(torch.randint(n, (1,), generator=generator))

