"""`TRuSTKVConfig`: ``trust-kv``, TRuST (reconstruction) with its forgetting loss moved into the cross-attention K/V."""

from __future__ import annotations

from typing import ClassVar, Literal

from .config import TRuSTConfig


class TRuSTKVConfig(TRuSTConfig):
    """``trust-kv``: NOT the paper's TRuST; one labelled change, the forgetting loss.

    The forgetting loss is UCE's source term written as a loss (``forget_loss="kv"``,
    `erasekit.methods.retain.KVMatchLoss`): every position of every target prompt is pulled
    to the key and value its anchor prompt had in the original model, and the kept prompts'
    keys and values are held (``retain_kv_weight`` 20 on ``retain_prompts()`` plus
    ``preserve``).  Saliency is that loss's gradient, the mask is a dynamic top-40% per
    tensor, updates are masked, and the spec's CSR regulariser stays on (its prediction term
    needs a UNet pass per step; the K/V losses need none); the scope is the K/V (a query
    weight never sees the text, so the K/V loss cannot move it).  Why it exists: with the
    spec's noise-space loss, TRuST on the Shapes model erases a combination only together
    with its parts and does not erase a colour; this variant erases shapes, colours,
    combinations and conditional concepts with one setting (docs/experiments/trust.md).

    SD defaults are TRuST's (lr 1e-5, 200 iterations, CSR beta 1) with the changes above;
    they are untested on Stable Diffusion.  ``shapes`` preset: the Shapes sampling and pools, lr 1e-3,
    600 iterations and CSR beta 0.1 (at beta 1 CSR holds a colour back), no stopping rule.  The seed barely matters: the K/V
    losses and the masks drawn from them are deterministic, and only CSR's term draws samples.
    """

    scope: str | None = "cross_attn_kv"
    scorer: str = "forget"
    forget_loss: Literal["noise", "kv"] = "kv"
    topk: float | None = 0.4
    mask_unit: Literal["neuron", "entry"] = "entry"
    saliency_momentum: float = 0.0
    cip_toward: Literal["zero", "original"] = "original"
    retain_kv_weight: float = 20.0
    retain_preserve: bool = True
    gamma: float = 0.0

    PRESETS: ClassVar[dict] = {"shapes": {"iterations": 600, "lr": 1e-3, "n_steps": 25, "guidance": 3.0, "pool_size": 8,
                                          "retain_pool_size": 8, "beta": 0.1}}
