"""Resumable storage of benchmark cells: one JSON per (scenario, method), written atomically.

``<root>/cells/<scenario>/<label>.json`` holds a cell (``original`` is the
unerased model; ``<variant>@seed<S>`` the variant with config seed S);
``adversarial_probes.json`` the adversarial prompts a searching source found
for the scenario (keyed by the model and the search's settings, so a report
rebuild does not search again); ``original.<fingerprint>.features.npy`` the
original model's detector features of the preservation images (for Frechet
distances; only the current original's are kept).  A cell is reused only
when its stored ``fingerprint`` equals the one the current run computes
(model weights, detector, sampling, prompts, method config), so a
retrained model or a changed setting never reuses stale numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import atomic


def digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def module_fingerprint(*modules: torch.nn.Module | None) -> str:
    """sha256 over the names and raw bytes of every parameter and buffer of the modules."""
    h = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for name, t in sorted({**dict(module.named_buffers()), **dict(module.named_parameters())}.items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


_REPLICATE = re.compile(r"@seed(\d+)$")


def replicate_label(variant: str, seed: int) -> str:
    """The stored label of ``variant`` measured with config seed ``seed`` (seed 0 keeps the plain label)."""
    return variant if seed == 0 else f"{variant}@seed{seed}"


def finite(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (strict JSON; e.g. preservation over a zero baseline)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class CellStore:
    """Cells under ``root``; ``invocation`` (the command line) is recorded in every cell this store saves."""

    def __init__(self, root: str | Path, invocation: str | None = None):
        self.root = Path(root)
        self.invocation = invocation

    def path(self, scenario: str, label: str) -> Path:
        return self.root / "cells" / scenario / f"{label}.json"

    def features_path(self, scenario: str, fingerprint: str) -> Path:
        return self.root / "cells" / scenario / f"original.{fingerprint}.features.npy"

    def load(self, scenario: str, label: str, fingerprint: str) -> dict | None:
        """The stored cell when it exists, parses and was made with ``fingerprint``; else None."""
        try:
            cell = json.loads(self.path(scenario, label).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return cell if isinstance(cell, dict) and cell.get("fingerprint") == fingerprint else None

    def stored_seeds(self, scenario: str) -> list[int]:
        """The extra method-config seeds with at least one stored cell (``<variant>@seed<S>.json``) here."""
        found = (_REPLICATE.search(p.stem) for p in (self.root / "cells" / scenario).glob("*@seed*.json"))
        return sorted({int(m.group(1)) for m in found if m})

    def save(self, cell: dict) -> Path:
        """Write ``cell``; a cell measured now gets ``invocation`` (the command line) set in place."""
        if self.invocation:
            cell.setdefault("invocation", self.invocation)
        return atomic.write_json(self.path(cell["scenario"], cell["label"]), finite(cell))

    def save_features(self, scenario: str, fingerprint: str, features: np.ndarray) -> Path:
        path = self.features_path(scenario, fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            with open(tmp, "wb") as fh:
                np.save(fh, features)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # A scenario has one original cell, so features saved under any other fingerprint can no
        # longer be read by any cell; dropping them keeps the committed results folder current.
        for stale in path.parent.glob("original.*.features.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
        return path

    def probes_path(self, scenario: str) -> Path:
        return self.root / "cells" / scenario / "adversarial_probes.json"

    def load_probes(self, scenario: str, key: str) -> tuple[list[dict] | None, str] | None:
        """The stored adversarial probes (as dicts) and note when they were found under ``key``; else None."""
        try:
            data = json.loads(self.probes_path(scenario).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("probes"), list):
            return None
        return (data["probes"] or None), str(data.get("note", ""))

    def save_probes(self, scenario: str, key: str, probes: list[dict] | None, note: str) -> Path:
        return atomic.write_json(self.probes_path(scenario), {"key": key, "note": note, "probes": probes or []})

    def load_features(self, scenario: str, fingerprint: str) -> np.ndarray | None:
        try:
            return np.load(self.features_path(scenario, fingerprint), allow_pickle=False)
        except (OSError, ValueError):
            return None
