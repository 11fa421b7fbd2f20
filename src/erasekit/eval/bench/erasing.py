"""Run one method on one scenario: configs, sequential multi-concept erasure, changed-parameter counts.

Method variants are the registered methods plus ``esd@kscu``: ESD's loss
with KSCU's parameter scope, iteration count and other training settings
(`KSCU_SHARED`: lr, guidance, retain terms) for the concept's kind, so
KSCU can be compared with ESD at equal iterations (and equal scope: the only
differences left are KSCU's key-step schedule, anchor term and prompt
augmentation).  When that configuration equals a plain ESD variant's (the
``shapes`` presets give ESD and KSCU both 150 iterations and lr 1e-4 for
objects, and KSCU's scope for them is ESD-u's), the benchmark reuses that
run instead of repeating it (`same_run_as`).

Multi-concept scenarios: every registered method takes ONE concept spec, so
all of them erase the concepts one after the other, each on the model
already carrying the previous deltas; the deltas are then composed into one
delta against the original weights (`compose_sequential`).  Anchors that name
another erased concept are replaced first (`ShapesTask.specs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...concepts.spec import ConceptSpec
from ...methods.base import get_method, list_methods
from ...models.delta import WeightDelta, apply_delta, resolve_tensors, revert_delta
from ...models.scopes import get_scope
from .memory import PeakRSS
from ..tasks import ShapesTask

ESD_AT_KSCU = "esd@kscu"
# Table order; registered methods missing here are appended after them.
PREFERRED_ORDER = ("uce", "trce-t", "trce-v", "trce", "esd-x", "esd-u", ESD_AT_KSCU, "kscu", "salun", "trust", "trust-kv")
# What ``esd@kscu`` takes from KSCU's config (for the concept's kind) besides scope and iterations:
# every training setting the two configs share, so only the loss and the step schedule differ.
KSCU_SHARED = ("lr", "n_steps", "guidance", "negative_guidance", "preserve_weight", "preserve_pool_size",
               "preserve_batch", "preserve_latents", "preserve_kv_weight")


def all_variants() -> list[str]:
    registered = list_methods()
    ordered = [v for v in PREFERRED_ORDER if v in registered or v == ESD_AT_KSCU]
    return ordered + [m for m in registered if m not in ordered]


def seed_dependent(variant: str) -> bool:
    """Whether a variant's result depends on its config seed (every fine-tune; not the closed forms)."""
    return get_method(registry_method(variant)).seeded


def registry_method(variant: str) -> str:
    return "esd-x" if variant == ESD_AT_KSCU else variant


@dataclass(frozen=True)
class MethodRun:
    """A variant's method and config for one concept; ``same_run_as`` names an identical plain variant."""

    variant: str
    method: str
    config: object
    same_run_as: str | None = None


def _config(method: str, world: str, overrides: dict) -> object:
    cls = get_method(method).config_cls
    extra = {"progress": False} if "progress" in cls.model_fields else {}
    return cls.for_world(world, **{**extra, **overrides})


def method_run(variant: str, concept: ConceptSpec, world: str, overrides: dict[str, dict]) -> MethodRun:
    """The config a variant runs with on ``concept`` (world preset, then the plan's overrides)."""
    if variant != ESD_AT_KSCU:
        # per-kind settings resolved: the cell records what ran
        return MethodRun(variant, variant, _config(variant, world, overrides.get(variant, {})).for_kind(concept.kind))
    kscu = _config("kscu", world, overrides.get("kscu", {})).for_kind(concept.kind)
    iterations, _ = kscu.resolved(concept.kind)
    shared = {f: getattr(kscu, f) for f in KSCU_SHARED}
    shared.update(iterations=iterations, scope=get_method("kscu").scope_for(kscu, concept.kind))
    esd = {k: v for k, v in overrides.get("esd-x", {}).items() if k not in shared}
    config = _config("esd-x", world, {**esd, **shared, **overrides.get(ESD_AT_KSCU, {})})
    for plain in ("esd-x", "esd-u"):
        other = _config(plain, world, overrides.get(plain, {}))
        # compared as values: esd-x and esd-u have config classes of their own (different presets)
        plain_config = other.model_copy(update={"scope": get_method(plain).scope_for(other, concept.kind)})
        if plain_config.model_dump() == config.model_dump():
            return MethodRun(variant, "esd-x", config, same_run_as=plain)
    return MethodRun(variant, "esd-x", config)


# ------------------------------------------------------------------ erasing
@dataclass
class ErasureOutcome:
    delta: WeightDelta
    runs: list[MethodRun]
    steps: list[WeightDelta]
    seconds: float
    memory: dict


def compose_sequential(pipe, erase_one: Callable[[ConceptSpec], WeightDelta], concepts: list[ConceptSpec],
                       method: str) -> tuple[WeightDelta, list[WeightDelta]]:
    """Erase ``concepts`` one after the other (each on top of the previous deltas) and compose the deltas.

    Returns (one delta from the original weights to the final ones, the step
    deltas); ``pipe`` is left with its original weights.
    """
    originals: dict[str, torch.Tensor] = {}
    steps: list[WeightDelta] = []
    try:
        for concept in concepts:
            delta = erase_one(concept)
            live = resolve_tensors(pipe, [n for n in delta.names if n not in originals])
            originals.update({n: t.detach().cpu().clone() for n, t in live.items()})
            apply_delta(pipe, delta)
            steps.append(delta)
        final = resolve_tensors(pipe, originals)
        composed = WeightDelta.from_state_dicts(
            originals, {n: t.detach().cpu() for n, t in final.items()}, method=method,
            config={"sequential": [d.manifest.config for d in steps]}, seed=steps[0].manifest.seed if steps else None,
            base_model=steps[0].manifest.base_model if steps else None,
            metrics={"sequential_steps": [d.manifest.metrics for d in steps]})
    finally:
        for delta in reversed(steps):
            revert_delta(pipe, delta)
    return composed, steps


def erase_scenario(pipe, variant: str, scenario: ShapesTask, world: str, overrides: dict[str, dict]) -> ErasureOutcome:
    """Run ``variant`` on the scenario's concepts (sequentially when several); time and peak memory."""
    concepts = scenario.specs()
    runs: list[MethodRun] = []

    def erase_one(concept: ConceptSpec) -> WeightDelta:
        run = method_run(variant, concept, world, overrides)
        runs.append(run)
        torch.manual_seed(getattr(run.config, "seed", 0))
        return get_method(run.method).erase(pipe, concept, run.config)

    with PeakRSS() as peak:
        t0 = time.perf_counter()
        if len(concepts) == 1:
            delta = erase_one(concepts[0])  # methods leave ``pipe`` as they found it
            steps = [delta]
        else:
            delta, steps = compose_sequential(pipe, erase_one, concepts, variant)
        seconds = time.perf_counter() - t0
    return ErasureOutcome(delta, runs, steps, seconds, peak.result())


# ------------------------------------------------------------------ accounting
def iterations_of(steps: list[WeightDelta]) -> int:
    """Optimiser iterations summed over the steps (0 for closed-form edits)."""
    return int(sum(d.manifest.metrics.get("iterations") or 0 for d in steps))


def scope_names(pipe, variant: str, steps: list[WeightDelta]) -> tuple[list[str], set[str]]:
    """(scope names, qualified parameter names) the method was allowed to change.

    Fine-tuning methods record their scope in the delta's metrics; closed-form
    K/V edits (UCE, TRCE stage 1) use ``cross_attn_kv``.  A method that records
    neither is measured against the tensors it touched.
    """
    names: list[str] = []
    unrecorded = get_method(registry_method(variant)).unrecorded_scope()
    if unrecorded:
        names.append(unrecorded)
    for d in steps:
        scope = d.manifest.metrics.get("scope")
        if scope and scope not in names:
            names.append(scope)
    if not names:
        return ["touched tensors"], {n for d in steps for n in d.names}
    params = set()
    for name in names:
        params |= set(get_scope(name).select(pipe.unet, prefix="unet."))
    return names, params


@torch.no_grad()
def changed_parameters(pipe, delta: WeightDelta, scope: set[str]) -> dict:
    """Entries whose value differs from the pipe's current (original) weights, as fractions of UNet and scope."""
    live = resolve_tensors(pipe, delta.names)
    changed = {n: int((delta.tensors[n] != live[n].detach().cpu()).sum()) for n in delta.names}
    unet_total = sum(p.numel() for p in pipe.unet.parameters())
    scope_total = sum(t.numel() for t in resolve_tensors(pipe, scope).values() if t is not None)
    in_unet = sum(c for n, c in changed.items() if n.startswith("unet."))
    in_scope = sum(c for n, c in changed.items() if n in scope)
    return {
        "changed_entries": sum(changed.values()),
        "changed_unet_entries": in_unet,
        "changed_outside_scope": sum(changed.values()) - in_scope,
        "unet_parameters": unet_total,
        "scope_parameters": scope_total,
        "unet_fraction": in_unet / unet_total if unet_total else 0.0,
        "scope_fraction": in_scope / scope_total if scope_total else 0.0,
        "changed_tensors": len(delta.names),
    }
