"""`SalUnConfig`: SalUn (Fan et al., ICLR 2024) as TRuST's static case."""

from __future__ import annotations

from typing import ClassVar, Literal

from .config import TRuSTConfig


class SalUnConfig(TRuSTConfig):
    """SalUn as TRuST's static case: one mask, forgetting loss (+ retain term) only.

    Same loss and scope as TRuST, mask computed once from the forgetting loss's
    gradient averaged over 16 samples (SalUn averages over its forget set);
    lr 1e-5 as SalUn; 1000 iterations (reconstruction, batch 1).  SalUn's
    released code ranks |g| globally and keeps a 50% fraction: set
    ``topk=0.5, mask_granularity="global"`` for that; the default keeps the
    spec's per-tensor ``xi`` threshold so SalUn and TRuST differ only in the
    mask schedule and the regulariser.  ``shapes`` preset: as TRuST's (lr 1e-3,
    xi mask), with 150 iterations (the ESD preset's budget); measurements in
    docs/experiments/trust.md.
    """

    iterations: int = 1000
    scorer: str = "forget"
    saliency_samples: int = 16
    mask_every: int | None = 0
    mask_unit: Literal["neuron", "entry"] = "entry"
    saliency_momentum: float = 0.0
    regularizer: Literal["csr", "cip", "cip+csr", "none"] = "none"

    PRESETS: ClassVar[dict] = {
        "shapes": {"iterations": 150, "lr": 1e-3, "n_steps": 25, "guidance": 3.0, "pool_size": 8,
                   "retain_pool_size": 8, "saliency_samples": 8},
    }


class SalUnPlusPlusConfig(SalUnConfig):
    """SalUn++ (TRuST's Figure 1 baseline): SalUn with its saliency map recomputed after every step.

    Everything is SalUn's (per-entry mask from the forgetting loss's gradient, xi
    threshold, no regulariser) except ``mask_every=1``; each recomputation uses
    one sample (``saliency_samples=1``, the step's own cost scale; SalUn's 16 per
    step would make every iteration 16 gradient passes).  ``shapes`` preset: SalUn's.
    """

    mask_every: int | None = 1
    saliency_samples: int = 1

    PRESETS: ClassVar[dict] = {"shapes": {**SalUnConfig.PRESETS["shapes"], "saliency_samples": 1}}
