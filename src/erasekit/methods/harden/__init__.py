"""Attack hardening: make any erasure hold against prompts and embeddings that bring the concept back.

Two variants, each returning ONE delta relative to the base model whose manifest records the
chain ``<method> -> harden:<variant>``:

- ``rece`` (`rece`): closed-form adversarial embedding + cross-attention K/V edit (RECE);
- ``adv`` (`adv`): adversarial training with a soft-prompt attack in the loop (AdvUnlearn),
  of the text encoder (default) or a UNet scope; with ``soup`` K, K runs of it averaged (`souped`).

`harden(pipe, delta, concept, config)` runs the variant of ``config``'s type.
"""

from __future__ import annotations

from ...concepts.spec import ConceptSpec
from ...models.delta import WeightDelta
from ...training.config import MethodConfig
from .adv import AdvConfig, harden_adv
from .proj import ProjConfig, harden_proj
from .rece import RECEConfig, adversarial_embedding, harden_rece, reproduction_error
from .soup import souped

VARIANTS: dict[str, type[MethodConfig]] = {"rece": RECEConfig, "adv": AdvConfig, "proj": ProjConfig}


def harden(pipe, delta: WeightDelta | None, concept: ConceptSpec, config: MethodConfig) -> WeightDelta:
    """Harden ``delta`` (None: the base model) against attacks on ``concept``; ``pipe`` holds the base model."""
    if isinstance(config, AdvConfig):
        return souped(harden_adv, pipe, delta, concept, config) if config.soup > 1 else harden_adv(pipe, delta, concept, config)
    if isinstance(config, RECEConfig):
        return harden_rece(pipe, delta, concept, config)
    if isinstance(config, ProjConfig):
        return harden_proj(pipe, delta, concept, config)
    raise TypeError(f"no hardening variant takes a {type(config).__name__}")


def variant_config(variant: str) -> type[MethodConfig]:
    """The config class of a hardening variant by name ('rece' or 'adv')."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown hardening variant {variant!r} (available: {', '.join(VARIANTS)})")
    return VARIANTS[variant]


def variant_chain(text: str) -> list[str]:
    """The variants of ``text``, one (``rece``) or a ``+``-joined chain applied in order (``adv+rece``)."""
    steps = text.split("+")
    if not text or any(v not in VARIANTS for v in steps):
        raise ValueError(f"unknown hardening variant {text!r}: choose {', '.join(VARIANTS)} or a chain such as adv+rece")
    return steps


__all__ = ["AdvConfig", "ProjConfig", "RECEConfig", "VARIANTS", "adversarial_embedding", "harden", "harden_adv", "harden_proj", "harden_rece",
           "reproduction_error", "souped", "variant_chain", "variant_config"]
