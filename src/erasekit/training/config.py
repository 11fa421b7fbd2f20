"""Configs: `MethodConfig`, the base of every method's config, and `FineTuneConfig`, the trainer's settings.

A method's config is a pydantic model whose defaults are the paper's Stable
Diffusion preset, with named ``PRESETS`` for other worlds.  `run_key`
identifies a fine-tuning run for checkpoint compatibility.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..concepts.spec import ConceptSpec
from ..models.digest import json_sha256


class MethodConfig(BaseModel):
    """Base of every method config; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0, description="Seed of every random draw the method makes (noise, timesteps, prompts).")

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Options beyond the paper whose default switches them off.  At that default they are
    # left out of `fingerprint`, so adding such an option does not make results measured
    # before it existed look stale.
    EXTENSIONS: ClassVar[tuple[str, ...]] = ()
    # Options of the paper or its release added after results were stored, whose default is what
    # ran before; at that default they are left out of `fingerprint` as well.
    LATER_OPTIONS: ClassVar[tuple[str, ...]] = ()
    # Settings of how a run is carried out, not of what it computes (none here; see FineTuneConfig).
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def extensions(cls) -> set[str]:
        """The `EXTENSIONS` of this config class and its bases."""
        return {n for klass in cls.__mro__ for n in getattr(klass, "EXTENSIONS", ())}

    @classmethod
    def optional_fields(cls) -> set[str]:
        """The fields left out of `fingerprint` at their defaults: `EXTENSIONS` and `LATER_OPTIONS`."""
        return cls.extensions() | {n for klass in cls.__mro__ for n in getattr(klass, "LATER_OPTIONS", ())}

    @classmethod
    def left_out_at_default(cls, name: str, value: Any) -> bool:
        """Whether ``name`` is an optional field and ``value`` its default (a setting that decides nothing new)."""
        return name in cls.optional_fields() and value == cls.model_fields[name].get_default(call_default_factory=True)

    def fingerprint(self) -> dict[str, Any]:
        """What decides the result: every field, less the optional fields still at their defaults."""
        dump = self.model_dump()
        for name in sorted(self.optional_fields()):
            if self.left_out_at_default(name, getattr(self, name)):
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



class FineTuneConfig(MethodConfig):
    """Settings of the shared trainer; method configs inherit them.

    ``iterations=None`` lets the method derive its budget (KSCU: by concept
    kind; TRCE: epochs x trajectories).  ``scope=None`` lets it choose its scope.
    ``resume``: False starts over; True continues the newest checkpoint of the same
    run with the same lr; ``'new-lr'`` also continues one written under another lr
    or lr schedule (the steps after it use this config's; the delta's metrics
    record ``lr_history``).
    """

    iterations: int | None = Field(None, description="Fine-tuning steps; None lets the method derive its budget.")
    lr: float = Field(1e-5, description="Learning rate of the optimiser.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule over the iterations (the papers use a constant rate).")
    scope: str | None = Field(
        None, description="Registered parameter scope that is trained; None lets the method choose per concept kind.")
    checkpoint_dir: str | None = Field(None, description="Folder for resumable checkpoints; None writes none.")
    checkpoint_every: int = Field(0, description="Steps between checkpoints; 0 writes none.")
    keep_checkpoints: int = Field(2, description="How many of the newest checkpoints are kept.")
    resume: bool | Literal["new-lr"] = Field(
        False, description="Continue the newest checkpoint of the same run ('new-lr': also one under another lr).")
    progress: bool = Field(True, description="Show a progress bar.")
    gradient_checkpointing: bool = Field(False, description="Recompute UNet activations in the backward pass to save memory.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="Autocast dtype of the forward passes on CUDA; the weights and the delta stay float32.")
    optimizer: Literal["adam", "adamw", "adam8bit"] = Field(
        "adam", description="Optimiser (adam8bit uses bitsandbytes where installed).")

    # Trainer options beyond the papers (their default is the papers' constant learning rate).
    EXTENSIONS: ClassVar[tuple[str, ...]] = ("lr_schedule",)
    # Settings of how a run is carried out, not of what it computes.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("checkpoint_dir", "checkpoint_every", "keep_checkpoints", "resume",
                                                 "progress")
    # Settings a checkpoint may be resumed across: those that do not change the result, and the
    # learning rate and its schedule, which the checkpoint records and the trainer checks itself
    # (another lr resumes only with resume='new-lr').
    RUN_KEY_EXCLUDE: ClassVar[tuple[str, ...]] = RUNTIME_FIELDS + ("gradient_checkpointing", "lr", "lr_schedule")


def run_key(method: str, config: FineTuneConfig, concept: ConceptSpec | None = None, **extra: Any) -> str:
    """Identifies a run for checkpoint compatibility (method, result-relevant config, concept)."""
    cfg = {k: v for k, v in config.fingerprint().items() if k not in FineTuneConfig.RUN_KEY_EXCLUDE}
    payload = {"method": method, "config": cfg, "concept": concept.effective_dict() if concept else None, **extra}
    return json_sha256(payload, 20)

