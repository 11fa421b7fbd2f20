"""The method registry: every method's facts in one `MethodSpec`, loaded lazily by name.

A method is one module that defines its config (a `MethodConfig` whose
defaults are the paper's Stable Diffusion preset, with named ``PRESETS`` for
other worlds) and ``erase(pipe, concept, config) -> WeightDelta``, and ends
with one ``register(MethodSpec(...))`` per method name it serves.  The
pipeline is edited only through the returned delta: ``erase`` leaves ``pipe``
as it found it.

`REGISTRY` maps each name to its module (one line per method); `get_method`
imports the module on first use, so listing names costs nothing.  Adding a
method touches its own module and one line of `REGISTRY`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..models.delta import WeightDelta
from ..training.config import MethodConfig

REGISTRY: dict[str, str] = {
    "uce": "erasekit.methods.uce",
    "trce-t": "erasekit.methods.trce",
    "trce-v": "erasekit.methods.trce_v",
    "trce": "erasekit.methods.trce_v",
    "esd-x": "erasekit.methods.esd",
    "esd-u": "erasekit.methods.esd",
    "kscu": "erasekit.methods.kscu",
    "trust": "erasekit.methods.trust",
    "salun": "erasekit.methods.trust",
    "salun++": "erasekit.methods.trust",
    "trust-kv": "erasekit.methods.trust",
}


@dataclass(frozen=True)
class MethodWork:
    """UNet samples a method runs: per iteration without grad / with grad, its training batch, one-off sampling.

    The cost model `erasekit.methods.estimate` turns into peak memory and time.
    """

    method: str
    scope: str
    iterations: int
    nograd_per_iter: float
    grad_per_iter: float
    train_batch: int
    setup_nograd: float = 0.0
    setup_grad: float = 0.0
    double_backward: bool = False
    closed_form: bool = False
    notes: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """Everything the library, the CLI and the benchmark need to know about one method.

    - ``family``: ``closed-form`` (a solved edit, no training loop) or ``fine-tune``;
    - ``default_scope``: the parameter scope used when ``config.scope`` is unset: one
      name, one per concept kind, or a function of the config (`scope_for`);
    - ``seeded`` (from the family): whether the config seed changes the result (closed forms draw nothing);
    - ``work``: ``(spec, config, kind) -> MethodWork``, the counts behind `erasekit.methods.estimate`;
    - ``quick``: config overrides of the quick benchmark (fewer iterations or trajectories);
    - ``closed_form_scope``: the K/V scope a fine-tuning method's closed-form first stage edits
      without recording it (TRCE's stage 1).
    """

    name: str
    config_cls: type[MethodConfig]
    erase: Callable[..., WeightDelta]
    summary: str
    family: Literal["closed-form", "fine-tune"]
    default_scope: str | Mapping[str, str] | Callable[[Any], str]
    work: Callable[[MethodSpec, Any, str], MethodWork]
    quick: Mapping[str, Any] = field(default_factory=dict)
    closed_form_scope: str | None = None

    @property
    def seeded(self) -> bool:
        return self.family == "fine-tune"

    def scope_for(self, config: Any = None, kind: str = "object") -> str:
        """The scope ``config`` trains on a concept of ``kind``: its own ``scope`` if set, else the default."""
        own = getattr(config, "scope", None)
        if own:
            return own
        if isinstance(self.default_scope, str):
            return self.default_scope
        if callable(self.default_scope):
            return self.default_scope(config if config is not None else self.config_cls())
        return self.default_scope[kind]

    def unrecorded_scope(self) -> str | None:
        """The scope this method changes without naming it in the delta's metrics (closed-form K/V edits)."""
        if self.family == "closed-form":
            return self.scope_for()
        return self.closed_form_scope


_SPECS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Record ``spec`` under its name (called once per name, at the bottom of the method's module)."""
    if spec.name not in REGISTRY:
        raise KeyError(f"method {spec.name!r} is not in erasekit.methods.base.REGISTRY: add its module there")
    _SPECS[spec.name] = spec
    return spec


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def list_methods() -> list[str]:
    return sorted(REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``, importing its module on first use; unknown names suggest close ones."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownMethodError(f"unknown method {name!r}{hint} (available: {', '.join(list_methods())})")
    if name not in _SPECS:
        importlib.import_module(REGISTRY[name])
        if name not in _SPECS:
            raise KeyError(f"{REGISTRY[name]} does not register method {name!r}")
    return _SPECS[name]
