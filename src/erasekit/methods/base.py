"""What every erasure method shares: its config base class and the method registry.

A method is one module exposing ``Config`` (a pydantic model whose defaults are
the paper's Stable Diffusion preset, with named ``PRESETS`` for other worlds)
and ``erase(pipe, concept, config) -> WeightDelta``.  The pipeline is edited
only through the returned delta: ``erase`` leaves ``pipe`` as it found it.
"""

from __future__ import annotations

import difflib
import importlib
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from ..concepts.spec import ConceptSpec
from ..models.delta import WeightDelta, applied_deltas, peak_memory_bytes, revert_delta, snapshot


class MethodConfig(BaseModel):
    """Base of every method config; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Options beyond the paper whose default switches them off.  At that default they are
    # left out of `fingerprint`, so adding such an option does not make results measured
    # before it existed look stale.
    EXTENSIONS: ClassVar[tuple[str, ...]] = ()

    def fingerprint(self) -> dict[str, Any]:
        """What decides the result: every field, less the `EXTENSIONS` still at their defaults."""
        dump = self.model_dump()
        extensions = {n for klass in type(self).__mro__ for n in getattr(klass, "EXTENSIONS", ())}
        for name in sorted(extensions):
            if getattr(self, name) == type(self).model_fields[name].default:
                dump.pop(name)
        return dump

    @classmethod
    def preset(cls, name: str | None, **overrides) -> "MethodConfig":
        """``sd`` (the paper's defaults) or another named preset, then overrides.

        An override of ``None`` is a value, not "unset": ``topk=None`` replaces a
        preset's top-k mask by the threshold.  Callers drop their own unset flags.
        """
        values: dict[str, Any] = {}
        if name and name != "sd":
            if name not in cls.PRESETS:
                raise ValueError(f"{cls.__name__} has no preset {name!r}; presets: sd, {', '.join(cls.PRESETS)}")
            values.update(cls.PRESETS[name])
        values.update(overrides)
        return cls(**values)


    def for_kind(self, kind: str) -> "MethodConfig":
        """The config a concept of ``kind`` runs with; the same unless a method sets values per kind (KSCU)."""
        return self

    @classmethod
    def for_world(cls, world: str, **overrides) -> "MethodConfig":
        """The world's preset when the method has one (e.g. 'shapes'), else the SD defaults."""
        return cls.preset(world if world in cls.PRESETS else "sd", **overrides)


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


class EditSession:
    """Snapshot the tensors a method will change, then turn the edit into a delta and undo it.

    ``with EditSession(pipe, names, ...) as s: <edit in place>``; afterwards
    ``s.delta`` holds the result and ``pipe`` is back to its original weights.
    """

    def __init__(self, pipe, names: list[str], method: str, config: MethodConfig, concept: ConceptSpec,
                 base_model: str | None = None):
        from ..models.loading import SHAPES_ID, is_shapes_world

        self.pipe, self.names, self.method, self.config, self.concept = pipe, names, method, config, concept
        self.base_model = base_model or (SHAPES_ID if is_shapes_world(pipe) else
                                         getattr(getattr(pipe, "config", None), "_name_or_path", None))
        applied = applied_deltas(pipe)
        self.parent = applied[-1] if applied else None
        self.delta: WeightDelta | None = None
        self.metrics: dict[str, Any] = {}

    def __enter__(self) -> "EditSession":
        self.originals = snapshot(self.pipe, self.names)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            _restore(self.pipe, self.originals)
            return
        config = {**self.config.model_dump(), "concept": self.concept.to_dict()}
        self.delta = WeightDelta.from_changes(
            self.pipe, self.originals, record=True, method=self.method, config=config,
            seed=self.config.seed, base_model=self.base_model, metrics=self.metrics, parent=self.parent,
            wall_time_s=time.perf_counter() - self.t0, peak_memory=peak_memory_bytes(),
        )
        revert_delta(self.pipe, self.delta)


@torch.no_grad()
def _restore(pipe, originals: dict[str, torch.Tensor]) -> None:
    from ..models.delta import resolve_tensors

    for name, t in resolve_tensors(pipe, originals).items():
        if t is not None:
            t.copy_(originals[name])
