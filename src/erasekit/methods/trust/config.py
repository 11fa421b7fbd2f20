"""TRuST's configs: `TRuSTConfig` (the reconstruction's SD-1.5 defaults), its Shapes preset and option checks.

Defaults (SD-1.5; interpretations listed in docs/methods/trust.md): lr 1e-5 (as
SalUn); 200 iterations; neuron masks (output rows of attn2 q/k/v) from a running
mean (0.9) of the row saliency, xi 2.0 to enter, xi_keep 1.0 to stay, recomputed
every iteration; DDIM 50 steps, CFG 7.5 for the forget pool of 16 latents (SalUn's
forget set); 1 saliency sample per recomputation; gamma 1.0 (SalUn's retain term,
active only for concepts with retain prompts); regulariser ``csr`` with beta 1.0,
``cip`` beta 1e-5 toward zero; no stopping rule.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ...training import FineTuneConfig
from ..saliency import DEFAULT_CLIP

SCOPE = "cross_attn_qkv"
BETA_DEFAULTS = {"cip": 1e-5, "csr": 1.0}
SHAPES_PRESET = {"iterations": 200, "lr": 1e-2, "n_steps": 25, "guidance": 3.0, "pool_size": 8, "retain_pool_size": 8,
                 "stop_ratio": 0.1, "stop_prompts": "in-context", "retain_preserve": True, "retain_kv_weight": 0.03}


class TRuSTConfig(FineTuneConfig):
    """TRuST (reconstruction) on SD-1.5; options beyond the spec are listed in ``EXTENSIONS`` (off by default).

    ``mask_every``: 1 = dynamic (TRuST), k = every k iterations, 0/None = once
    (static, SalUn).  ``topk`` (a fraction) replaces the ``xi`` threshold.
    ``beta`` None takes `BETA_DEFAULTS` per regulariser (with ``cip+csr`` a
    given beta applies to both).  ``scope`` None = ``cross_attn_qkv``.

    Preset ``shapes`` (the Shapes model's scale and sampling): 25 DDIM steps, CFG 3,
    lr 1e-2, pools of 8 latents, the preservation prompts' keys and values held at
    weight 0.03 (``retain_preserve``, ``retain_kv_weight``), and the stopping rule at a
    tenfold fall of the detector's measured presence on in-context probes within a
    200-iteration budget (``scorer="auto"`` resolves to the Shapes detector there).
    """

    iterations: int = 200
    lr: float = 1e-5
    n_steps: int = Field(50, description="DDIM steps of the sampled latents (pools, partial generations)")
    guidance: float = Field(7.5, description="CFG scale of the sampled latents")
    latents: Literal["pool", "partial"] = Field(
        "pool", description="x_t from a pool generated once (SalUn's forget set) or a fresh partial generation "
                            "per iteration (ESD-style)")
    pool_size: int = Field(16, description="target latents in the forget pool")
    retain_pool_size: int = Field(16, description="latents per retain pool")
    scorer: str = Field("auto", description="concept score whose gradient ranks entries: clip, detector, forget, auto")
    clip_model: str | None = Field(DEFAULT_CLIP, description="CLIP checkpoint of the clip scorer")
    saliency_samples: int = Field(1, description="samples whose saliency is summed per mask recomputation")
    xi: float = Field(2.0, description="mask threshold: |g| >= mean + xi std per tensor (spec)")
    topk: float | None = Field(None, description="keep this fraction of entries instead of the xi threshold")
    mask_granularity: Literal["tensor", "global"] = Field("tensor", description="rank entries per tensor or globally")
    mask_every: int | None = Field(1, description="recompute the mask every k iterations; 0/None: once (static)")
    mask_unit: Literal["neuron", "entry"] = Field(
        "neuron", description="what a mask selects: whole output rows of q/k/v (neurons) or single entries")
    xi_keep: float | None = Field(1.0, description="hysteresis: a selected neuron stays while its score >= mean + "
                                                   "xi_keep std (None: re-threshold from scratch)")
    saliency_momentum: float = Field(0.9, description="running mean of the saliency across recomputations "
                                                      "(aggregates samples and timesteps)")
    mask_contrast: float = Field(0.0, description="extension: subtract c x the retain prompts' scaled saliency")
    retain_kv_weight: float = Field(0.0, description="extension: weight of the retain prompts' K/V drift loss")
    retain_mask: bool = Field(False, description="extension: add the entries salient for the retain loss to each mask")
    forget_loss: Literal["noise", "kv"] = Field(
        "noise", description="noise-space forgetting loss (spec) or UCE's source term as a K/V loss (extension)")
    forget_target: Literal["anchor", "esd"] = Field(
        "anchor", description="what the noise-space loss pulls the target's prediction to: the frozen model's anchor "
                              "prediction (SalUn's) or ESD's negatively guided eps(x_t,'') - g (eps(x_t,c) - eps(x_t,'')) "
                              "(extension)")
    negative_guidance: float = Field(1.0, description="g of the esd forgetting target")
    batch_size: int = Field(1, description="extension: forget and retain samples per iteration")
    retain_batch_size: int | None = Field(None, ge=1, description="extension: retain samples per iteration "
                                                                  "(None: batch_size)")
    regularizer: Literal["csr", "cip", "cip+csr", "none"] = Field("csr",
                                                                 description="CSR (Hessian), CIP (L1), both, none")
    csr_hessian: Literal["exact", "finite-difference"] = Field(
        "exact", description="extension: CSR's Hessian-vector product by double backward (math attention) or by a "
                             "central difference of two plain gradients (fused attention, a plain step's memory)")
    cip_toward: Literal["zero", "original"] = Field(
        "zero", description="CIP's L1 pulls the masked weights to zero (removal) or their change to zero")
    stop_ratio: float | None = Field(None, description="stop once the concept's measured presence <= this x its "
                                                       "value before training (None: run every iteration)")
    stop_every: int = Field(10, description="iterations between presence measurements")
    stop_probes: int = Field(8, description="images generated per presence measurement")
    stop_steps: int = Field(10, description="DDIM steps of those images")
    stop_prompts: Literal["targets", "in-context"] = Field(
        "targets", description="extension: probe prompts of the presence measurements: the training prompts, or the "
                               "concept's words beside a second attribute's values (Shapes concepts)")
    beta: float | None = Field(None, description="regulariser weight; None: BETA_DEFAULTS")
    gamma: float = Field(1.0, description="weight of the retain term")
    retain_preserve: bool = Field(False, description="also keep the concept's preserve prompts in the retain term")
    n_synonyms: int | None = Field(None, description="target/anchor synonyms used (None: all)")
    n_templates: int | None = Field(None, description="prompt templates used (None: all)")

    EXTENSIONS: ClassVar[tuple[str, ...]] = ("mask_contrast", "retain_kv_weight", "retain_mask",
                                             "forget_loss", "forget_target", "negative_guidance", "batch_size",
                                             "retain_batch_size", "csr_hessian", "stop_prompts")
    PRESETS: ClassVar[dict] = {"shapes": SHAPES_PRESET}

    @field_validator("mask_every")
    @classmethod
    def _mask_every(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError("mask_every must be >= 1 (recompute every k iterations) or 0/None (static)")
        return v

    @field_validator("stop_ratio")
    @classmethod
    def _stop_ratio(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v < 1:
            raise ValueError("stop_ratio is a fraction in (0, 1) or None (no stopping rule)")
        return v

    @field_validator("pool_size", "retain_pool_size", "saliency_samples", "n_steps", "batch_size", "stop_every",
                     "stop_probes", "stop_steps")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("mask_contrast", "retain_kv_weight")
    @classmethod
    def _contrast(cls, v: float) -> float:
        if v < 0:
            raise ValueError("mask_contrast and retain_kv_weight are >= 0 (0 = off, the spec's TRuST)")
        return v

    @field_validator("saliency_momentum")
    @classmethod
    def _momentum(cls, v: float) -> float:
        if not 0 <= v < 1:
            raise ValueError("saliency_momentum is in [0, 1)")
        return v

    @field_validator("topk")
    @classmethod
    def _topk(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 1:
            raise ValueError("topk is a fraction in (0, 1]")
        return v

    @property
    def retain_draws(self) -> int:
        """Retain samples per iteration: ``retain_batch_size``, else ``batch_size``."""
        return self.retain_batch_size or self.batch_size

    @property
    def static(self) -> bool:
        return not self.mask_every

    def betas(self) -> dict[str, float]:
        """The active regularisers and their weights."""
        if self.regularizer == "none":
            return {}
        names = self.regularizer.split("+")
        return {n: (self.beta if self.beta is not None else BETA_DEFAULTS[n]) for n in names}

    @property
    def double_backward(self) -> bool:
        """Whether a step differentiates a gradient: CSR with its exact Hessian-vector product."""
        return "csr" in self.betas() and self.csr_hessian == "exact"

    def step_draws_sample(self) -> bool:
        """Whether an iteration draws a target ``x_t``: the noise forgetting loss predicts on it and CSR
        differentiates that prediction; the K/V forgetting loss alone needs no sample."""
        return self.forget_loss == "noise" or "csr" in self.betas()

    def scorer_draws_sample(self, scorer_name: str | None = None) -> bool:
        """Whether a mask recomputation draws target samples: every scorer but ``forget`` with the K/V
        forgetting loss (which is then that loss itself).  ``scorer_name`` is the resolved scorer
        (``auto`` resolves at run time); None takes ``self.scorer``."""
        return not (self.forget_loss == "kv" and (scorer_name or self.scorer) == "forget")

    def needs_target_pool(self, scorer_name: str | None = None) -> bool:
        """Whether a pool of target latents is generated up front (only with ``latents="pool"``)."""
        return self.latents == "pool" and (self.step_draws_sample() or self.scorer_draws_sample(scorer_name))
