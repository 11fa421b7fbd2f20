"""Data-parallel fine-tuning under ``accelerate launch``: every process trains the same replica.

Launched with ``accelerate launch --multi_gpu --num_processes N -m erasekit.cli erase ...``
(GPUs; on a CPU-only machine the same command runs N gloo processes), each
process runs the whole method with its own samples and the `Trainer` averages
the scope's gradients over processes before every optimiser step, so all
replicas take the same step and stay equal: an iteration sees N samples instead
of one.  Process 0 draws exactly the samples a one-process run draws (its step
generators are the same), the others draw their own.

What has to be shared besides gradients, and is:

- the NaN/inf guard: a non-finite loss or gradient on any process stops all of them;
- TRuST/SalUn saliency: the gradient that ranks entries for the mask is averaged
  too (`average`), so every process holds the same mask;
- checkpoints: process 0 writes the weights and Adam state; every process's own
  step-function state (a running trajectory, loss sums) is gathered into the
  same file and handed back to its process on resume;
- at the end the replicas are compared by checksum (`check_replicas_agree`) and a
  divergence is an error, not a silent average.

Communication goes through accelerate (``PartialState``, ``accelerate.utils.reduce``
and ``gather_object``); nothing here spawns processes or opens sockets itself.
Without ``accelerate launch`` (one process) `current` returns None and the
`Trainer` runs exactly as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch


class ReplicaDivergenceError(RuntimeError):
    """The data-parallel replicas ended with different weights."""


@dataclass(frozen=True)
class DataParallel:
    """The running process group as the trainer needs it (from accelerate's ``PartialState``)."""

    state: object

    @property
    def num_processes(self) -> int:
        return int(self.state.num_processes)

    @property
    def rank(self) -> int:
        return int(self.state.process_index)

    @property
    def is_main(self) -> bool:
        return bool(self.state.is_main_process)

    @property
    def device(self) -> torch.device:
        return self.state.device

    def wait(self) -> None:
        self.state.wait_for_everyone()

    def mean_(self, tensors: Iterable[torch.Tensor]) -> None:
        """Replace every tensor by its mean over processes, in place (one flat all-reduce)."""
        from accelerate.utils import reduce

        tensors = list(tensors)
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        flat = reduce(flat, reduction="mean")
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
            offset += n

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on at least one."""
        from accelerate.utils import reduce

        return bool(reduce(torch.tensor([float(flag)], device=self.device), reduction="sum").item() > 0)

    def gather(self, obj: object) -> list:
        """``obj`` from every process, in rank order (on every process)."""
        from accelerate.utils import gather_object

        return gather_object([obj])


def launched_processes() -> int:
    """How many processes ``accelerate launch`` (torchrun) started this one among; 1 when not launched."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def partial_state(cpu: bool = False):
    """accelerate's PartialState (rank, world size, device); a single process when not launched.

    Without CUDA, processes started by ``accelerate launch --multi_gpu`` (torchrun) are
    joined on the CPU (gloo backend): accelerate only does that when asked for ``cpu``.
    """
    from accelerate import PartialState

    if launched_processes() > 1 and not torch.cuda.is_available():
        cpu = True
    return PartialState(cpu=cpu)


def current() -> DataParallel | None:
    """The process group when this process was started by ``accelerate launch`` with N > 1, else None."""
    if launched_processes() <= 1:
        return None  # not launched as a group: initialise nothing
    state = partial_state()
    return DataParallel(state) if state.num_processes > 1 else None


def average(grads: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """``grads`` averaged over processes in place when data-parallel (a no-op on one process)."""
    dp = current()
    if dp is not None:
        dp.mean_(grads.values())
    return grads


def checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """One short digest of named tensors' raw bytes (`erasekit.models.delta.fingerprint` per tensor)."""
    from ..models.delta import fingerprint
    from ..models.digest import text_sha256

    parts = [f"{name}:{fingerprint(tensors[name])}" for name in sorted(tensors)]
    return text_sha256("\n".join(parts), 16)


def check_replicas_agree(dp: DataParallel, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise `ReplicaDivergenceError` unless every process holds the same ``tensors``."""
    sums = dp.gather(checksum(tensors))
    if len(set(sums)) > 1:
        raise ReplicaDivergenceError(f"data-parallel replicas diverged (weight checksums by rank: {sums}); "
                                     "a step function used per-process state to choose which entries to update")
