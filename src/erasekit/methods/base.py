"""What every erasure method shares: its config base class and the method registry.

A method is one module exposing ``Config`` (a pydantic model whose defaults are
the paper's Stable Diffusion preset, with named ``PRESETS`` for other worlds)
and ``erase(pipe, concept, config) -> WeightDelta``.  The pipeline is edited
only through the returned delta: ``erase`` leaves ``pipe`` as it found it.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Callable

from ..models.delta import WeightDelta
from ..training.config import MethodConfig


@dataclass(frozen=True)
class MethodInfo:
    name: str
    config_cls: type[MethodConfig]
    erase: Callable[..., WeightDelta]
    summary: str


_MODULES = {
    "uce": "erasekit.methods.uce",
    "trce-t": "erasekit.methods.trce",
    "trce-v": "erasekit.methods.trce_v",
    "trce": "erasekit.methods.trce_v",
    "esd-x": "erasekit.methods.esd",
    "esd-u": "erasekit.methods.esd",
    "kscu": "erasekit.methods.kscu",
    "trust": "erasekit.methods.trust",
    "salun": "erasekit.methods.trust",
    "trust-kv": "erasekit.methods.trust",
}


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def list_methods() -> list[str]:
    return sorted(_MODULES)


def get_method(name: str) -> MethodInfo:
    if name not in _MODULES:
        close = difflib.get_close_matches(name, list(_MODULES), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownMethodError(f"unknown method {name!r}{hint} (available: {', '.join(list_methods())})")
    module = importlib.import_module(_MODULES[name])
    return module.METHODS[name]
