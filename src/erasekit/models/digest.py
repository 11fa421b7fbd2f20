"""Digests: sha256 of tensors' raw bytes, of text and of JSON payloads, in one place.

- `tensor_bytes` / `tensor_sha256`: the bytes of a tensor as stored (any dtype, any
  device), and their sha256 (a delta's per-tensor fingerprints);
- `new_hash` / `update_tensor` / `update_module`: a running sha256 fed with text, tensors
  and a module's state dict (weights digests, run fingerprints);
- `text_sha256` / `text_sha256_bytes`: sha256 of a str (UTF-8) or bytes, as hex
  (optionally its first ``length`` digits) or as raw bytes (seeds);
- `json_sha256`: sha256 of ``json.dumps(payload, sort_keys=True, default=str)``,
  the key of a config or a request.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t`` (detached, on the CPU, contiguous) as a flat uint8 tensor."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 (hex) of a tensor's raw bytes."""
    return hashlib.sha256(tensor_bytes(t).numpy().tobytes()).hexdigest()


def new_hash(data: str | bytes = b""):
    """A running sha256, started with ``data`` (str as UTF-8)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data)


def update_tensor(h, t: torch.Tensor) -> None:
    """Feed a tensor's raw bytes into the running hash ``h``."""
    h.update(tensor_bytes(t).numpy())


def update_module(h, module: torch.nn.Module, prefix: str = "") -> None:
    """Feed every tensor of ``module``'s state dict (sorted by name; name, dtype, shape, bytes) into ``h``."""
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{prefix}{name}:{str(t.dtype).removeprefix('torch.')}:{tuple(t.shape)}".encode())
        update_tensor(h, t)


def text_sha256(data: str | bytes, length: int | None = None) -> str:
    """sha256 (hex) of ``data`` (str as UTF-8); its first ``length`` hex digits when given."""
    return new_hash(data).hexdigest()[:length]


def text_sha256_bytes(data: str | bytes) -> bytes:
    """The raw 32-byte sha256 of ``data`` (str as UTF-8)."""
    return new_hash(data).digest()


def json_sha256(payload: Any, length: int | None = None) -> str:
    """sha256 (hex) of ``payload`` as sorted-key JSON (other objects as ``str``); first ``length`` digits."""
    return text_sha256(json.dumps(payload, sort_keys=True, default=str), length)
