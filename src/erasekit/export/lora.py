"""The change a delta makes, as a LoRA in diffusers/peft keys (``pipe.load_lora_weights(folder)``).

Each changed weight ``W`` of a Linear or Conv layer becomes ``W + B A`` with the
difference ``D = W_new - W_base`` factorised by its SVD ``D = U S V^T``:
``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T``.  A convolution's difference is
factorised as the matrix ``(out, in * kh * kw)``: ``A`` is a convolution with the
layer's kernel into ``r`` channels and ``B`` a 1x1 convolution back.

- exact (default): ``r`` is the smallest rank whose dropped singular values
  weigh no more than float32 storage of the new weight resolves,
  ``||S_{>r}|| <= eps(float32) ||W_new||`` (Frobenius norms), so ``W + B A``
  equals ``W_new`` to the precision the weights are stored in;
- ``rank=r``: at most ``r`` per matrix; the relative Frobenius error
  ``||D - B A|| / ||D||`` is reported per matrix and over all of them.

No alphas are stored: diffusers then scales each module by 1 (alpha = rank),
and adapter weights (``set_adapters(..., adapter_weights=[s])``) or
``fuse_lora(lora_scale=s)`` give ``W + s D``.  Changes a LoRA cannot carry
(biases, norms, embeddings) are refused with `ExportError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.delta import WeightDelta
from .output import ExportError, base_and_new

WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # the name load_lora_weights(folder) looks for


@dataclass
class LoraFactors:
    """Per module ('component.module.path'): (A, B); ranks and relative errors per module."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    sq_error: float = 0.0
    sq_norm: float = 0.0

    @property
    def ranks(self) -> dict[str, int]:
        return {m: a.shape[0] for m, (a, _) in self.factors.items()}

    @property
    def relative_error(self) -> float:
        """||D - B A|| / ||D|| over every factorised matrix together."""
        return math.sqrt(self.sq_error / self.sq_norm) if self.sq_norm > 0 else 0.0

    def peft_state(self) -> dict[str, torch.Tensor]:
        """The diffusers/peft state dict: '<component>.<module>.lora_A.weight' and '.lora_B.weight'."""
        out = {}
        for module, (a, b) in self.factors.items():
            out[f"{module}.lora_A.weight"] = a.contiguous()
            out[f"{module}.lora_B.weight"] = b.contiguous()
        return out


def _owner(pipe: Any, name: str) -> nn.Module | None:
    component, _, rest = name.partition(".")
    module_path, _, leaf = rest.rpartition(".")
    try:
        owner = getattr(pipe, component).get_submodule(module_path)
    except AttributeError:
        return None
    return owner if leaf == "weight" else None


def factorise(diff: torch.Tensor, rank: int | None = None, new_norm: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(A, B, squared error, squared norm) of a Linear (2-D) or Conv (4-D) weight difference ``diff``.

    ``new_norm``: Frobenius norm of the new weight, which sets the exact rank (module docstring).
    """
    out_ch = diff.shape[0]
    matrix = diff.reshape(out_ch, -1).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    tail = s.pow(2).flip(0).cumsum(0).flip(0).sqrt()  # tail[k] = ||s[k:]||
    r = max(1, int((tail > torch.finfo(torch.float32).eps * new_norm).sum()))
    if rank is not None:
        r = min(r, rank)
    root = s[:r].sqrt()
    b, a = u[:, :r] * root, root[:, None] * vh[:r]
    sq_error = float((matrix - b @ a).pow(2).sum())
    sq_norm = float(matrix.pow(2).sum())
    if diff.ndim == 4:
        a = a.reshape(r, *diff.shape[1:])
        b = b.reshape(out_ch, r, 1, 1)
    return a.to(diff.dtype), b.to(diff.dtype), sq_error, sq_norm


def lora_factors(pipe: Any, delta: WeightDelta, rank: int | None = None) -> LoraFactors:
    """Factorise every tensor ``delta`` changes in ``pipe`` (its base); see the module docstring."""
    if rank is not None and rank < 1:
        raise ExportError(f"--rank must be at least 1, got {rank}")
    pairs = base_and_new(pipe, delta)
    refused = [n for n in pairs if not isinstance(_owner(pipe, n), (nn.Linear, nn.Conv2d))]
    if refused:
        raise ExportError(f"a LoRA carries Linear/Conv weights only; this delta also changes {refused[0]} "
                          f"({len(refused)} such tensors): export --format diffusers or single-file instead")
    result = LoraFactors()
    for name, (base, new) in pairs.items():
        diff = new.to(torch.float32) - base.to(torch.float32)
        if not torch.any(diff):
            continue
        a, b, sq_error, sq_norm = factorise(diff, rank, float(new.double().norm()))
        module = name.removesuffix(".weight")
        result.factors[module] = (a.to(new.dtype), b.to(new.dtype))
        result.errors[module] = math.sqrt(sq_error / sq_norm) if sq_norm > 0 else 0.0
        result.sq_error += sq_error
        result.sq_norm += sq_norm
    if not result.factors:
        raise ExportError(f"delta {delta.delta_id} changes no weight: nothing to export as a LoRA")
    return result


def write_lora(factors: LoraFactors, folder: str | Path, delta: WeightDelta) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` (diffusers/peft keys) into ``folder``."""
    from safetensors.torch import save_file

    path = Path(folder) / WEIGHTS_FILE
    save_file(factors.peft_state(), str(path), metadata={"format": "pt", "erasekit_delta_id": delta.delta_id,
                                                          "erasekit_method": delta.manifest.method})
    return path
