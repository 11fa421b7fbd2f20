"""What every hardening variant shares: load a base delta onto the base model, and compose the result.

A hardening run starts from the base model with the erasure ``delta`` copied in, edits the live
weights, and returns ONE delta relative to the base model: the base delta's tensors, replaced
where the hardening changed them, plus the hardening's own.  Its manifest's ``config.chain`` is
``[{method, delta_id}, {method: "harden:<variant>"}]`` and its method ``<method>+<variant>``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ...concepts.spec import ConceptSpec
from ...models.delta import DeltaMismatchError, WeightDelta, peak_memory_bytes, resolve_tensors, snapshot
from ...training.config import MethodConfig


def check_fits(pipe, delta: WeightDelta | None) -> None:
    """Raise `DeltaMismatchError` unless ``pipe`` holds the base tensors ``delta`` expects."""
    if delta is not None and (problems := delta.mismatches(pipe)):
        raise DeltaMismatchError(f"delta {delta.delta_id} does not fit this model: {'; '.join(problems[:3])}")


@torch.no_grad()
def copy_in(pipe, values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` (qualified names) into ``pipe``'s live tensors."""
    for name, t in resolve_tensors(pipe, values).items():
        t.copy_(values[name])


def load_base(pipe, delta: WeightDelta | None) -> None:
    """Copy ``delta`` (None: nothing) into ``pipe``, which must hold the base tensors it expects."""
    check_fits(pipe, delta)
    if delta is not None:
        copy_in(pipe, delta.tensors)


def kv_snapshot(pipe, delta: WeightDelta | None) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The base model's tensors that a closed-form K/V hardening may change (every cross-attention key and
    value projection, and ``delta``'s tensors), and copies of the key and value weights in layer order."""
    from ..closed_form import cross_attention_kv_names

    kv_names = cross_attention_kv_names(pipe.unet)
    originals = snapshot(pipe, sorted(set(kv_names) | set(delta.names if delta is not None else [])))
    return originals, [originals[n].clone() for n in kv_names]


def preserved_prompts(pipe, concept: ConceptSpec, config: MethodConfig) -> list[str]:
    """A closed-form hardening's preserved prompts: the empty prompt (``preserve: empty``), the concept's
    preserve list (at most ``max_preserve``), or that list plus ``n_general`` general prompts."""
    if config.preserve == "empty":
        return [""]
    own = list(concept.preserve[: config.max_preserve])
    if config.preserve == "concept":
        return own
    from ...concepts.general import general_prompts

    return own + general_prompts(pipe, config.n_general, exclude_words=list(concept.targets))


def kv_projections(unet) -> list[torch.nn.Linear]:
    """Every cross-attention key and value projection of ``unet``, in layer order."""
    from ...models.scopes import cross_attention_layers

    return [getattr(attn, p) for attn in cross_attention_layers(unet).values() for p in ("to_k", "to_v")]


def chain_of(delta: WeightDelta | None) -> list[dict]:
    """The steps that made ``delta``: its manifest's ``config.chain`` if it has one, else ``delta`` itself."""
    if delta is None:
        return []
    earlier = (delta.manifest.config or {}).get("chain")
    if not earlier:
        return [{"method": delta.manifest.method, "delta_id": delta.delta_id}]
    *steps, last = earlier
    return [*steps, {**last, "delta_id": delta.delta_id}] if "delta_id" not in last else list(earlier)


def composed_delta(pipe, originals: dict[str, torch.Tensor], delta: WeightDelta | None, variant: str,
                   concept: ConceptSpec, config: MethodConfig, metrics: dict[str, Any], t0: float) -> WeightDelta:
    """The delta from ``originals`` (base-model snapshot) to ``pipe`` now, recording the chain.

    The chain extends the base delta's own (a hardened or `chain_delta`-composed delta carries one), so
    hardening a hardened delta records every step: ``[{method, delta_id}, {harden:adv}, {harden:rece,
    delta_id of the adv-hardened delta}]``.
    """
    chain = chain_of(delta)
    return WeightDelta.from_changes(
        pipe, originals, record=False,
        method=f"{delta.manifest.method}+{variant}" if delta is not None else variant,
        config={"base": delta.manifest.config if delta is not None else {},
                "harden": {"variant": variant, **config.fingerprint()},
                "concept": concept.to_dict(), "chain": chain + [{"method": f"harden:{variant}"}]},
        seed=config.seed, base_model=delta.manifest.base_model if delta is not None else None,
        parent=delta.manifest.parent if delta is not None else None, metrics=metrics,
        wall_time_s=time.perf_counter() - t0, peak_memory=peak_memory_bytes())
