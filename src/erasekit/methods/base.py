"""The method registry: every method's facts in one `MethodSpec`, loaded lazily by name.

A method is one module that defines its config (a `MethodConfig` whose
defaults are the paper's Stable Diffusion preset, with named ``PRESETS`` for
other worlds) and ``erase(pipe, concept, config) -> WeightDelta``, and ends
with one ``register(MethodSpec(...))`` per method name it serves.  The
pipeline is edited only through the returned delta: ``erase`` leaves ``pipe``
as it found it.

`METHODS` (a `Registry`) maps each name to its module (one line per method);
`get_method` imports the module on first use, so listing names costs nothing.
Adding a method touches its own module and one line of `METHOD_MODULES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..models.delta import WeightDelta
from ..models.registry import Registry, UnknownNameError
from ..training.config import MethodConfig

METHOD_MODULES: dict[str, str] = {
    "uce": "erasekit.methods.uce",
    "trce-t": "erasekit.methods.trce.textual",
    "trce-v": "erasekit.methods.trce.visual",
    "trce": "erasekit.methods.trce.visual",
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
    # saliency-masked optimiser steps: "static" (one mask: a bool per trained entry) or "dynamic" (masks that
    # move: the step also copies the weights and both Adam moments of the scope, see MaskedUpdates)
    masked_updates: str = ""


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


class UnknownMethodError(UnknownNameError):
    """No method has this name."""


METHODS: Registry[MethodSpec] = Registry("method", UnknownMethodError)
for _name, _module in METHOD_MODULES.items():
    METHODS.lazy(_name, _module)


def register(spec: MethodSpec) -> MethodSpec:
    """Record ``spec`` under its name (called once per name, at the bottom of the method's module)."""
    if spec.name not in METHODS:
        raise KeyError(f"method {spec.name!r} is not in erasekit.methods.base.METHOD_MODULES: add its module there")
    return METHODS.add(spec.name, spec, overwrite=True)


def list_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``, importing its module on first use; unknown names suggest close ones."""
    return METHODS.get(name)
