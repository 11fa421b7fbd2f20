"""TRuST (Targeted Robust Selective fine-Tuning), reconstructed, and SalUn as its static special case.

RECONSTRUCTION.  No public code exists for TRuST; this package rebuilds it from
the paper's description (spec/methods.md, "TRuST").  Every number the paper does
not state is a choice made here and marked as such ("TRuST (reconstruction)").

It fine-tunes the cross-attention ``to_q``/``to_k``/``to_v`` weights (scope
``cross_attn_qkv``), but only the neurons (output rows) that carry the concept:

1. **Saliency mask** (`erasekit.methods.saliency`): the gradient ``g`` of a concept
   score (``clip`` as in the paper, the Shapes ``detector``, or the ``forget`` loss;
   ``auto`` picks the best available) gives each row the score ``sum_j |g[r, j]|``,
   averaged over recomputations (``saliency_momentum``); a row enters the mask at
   ``mean + xi std`` over its tensor's rows and stays while above ``mean + xi_keep std``,
   recomputed every ``mask_every`` iterations from the CURRENT weights (1: the paper's
   dynamic TRuST).  ``mask_unit="entry"`` thresholds single entries (SalUn, SalUn++).
2. **Forgetting loss** (SalUn-style, towards the anchor), eps* the edited model and
   eps the frozen original (`Trainer.reference`)::

       L_f = || eps*(x_t, c_target, t) - eps(x_t, c_anchor, t) ||^2      (mean over elements)

3. **Regulariser** (`losses`): ``cip`` (L1 of the masked weights, toward zero), ``csr``
   (squared masked gradient of ``||eps*||^2``, a Hessian-vector product), both, or none.
4. **Retain term** for combinations and conditional concepts, ``c_retain`` drawn
   each iteration from ``concept.retain_prompts()`` (+ ``preserve`` with
   ``retain_preserve``); plain concepts have none and the term vanishes::

       L_r = gamma * || eps*(x_r, c_retain, t) - eps(x_r, c_retain, t) ||^2

Total loss ``L = L_f + [beta R] + [gamma L_r]``, minimised by the shared trainer
(`erasekit.training.fine_tune`) with masked Adam steps (`masks`): the delta is
zero outside the union of the masks.  `stopping` ends training once the concept's
measured presence on generated probe images has fallen by ``stop_ratio``.

Modules: `config` (`TRuSTConfig`), `salun` (`SalUnConfig`, `SalUnPlusPlusConfig`),
`trust_kv` (`TRuSTKVConfig`, a labelled variant), `losses`, `masks`, `stopping`,
`step` (one iteration, `TrustStep`), `method` (entry points and registrations).
Metrics: entries and neurons changed, the entries holding 90% of the squared
change, mask recomputations, sizes and overlaps, union of masks, mean loss terms,
presence checks, the scorer used (measurements: docs/experiments/trust.md).
"""

from .config import BETA_DEFAULTS, SCOPE, TRuSTConfig
from .losses import cip_penalty, contrast_saliency, csr_penalty, double_backward_attention, summed
from .masks import MaskedUpdates
from .method import erase, erase_kv, erase_salun, erase_salun_pp
from .salun import SalUnConfig, SalUnPlusPlusConfig
from .step import MaskCallback, TrustStep, retain_prompt_list
from .trust_kv import TRuSTKVConfig

__all__ = ["BETA_DEFAULTS", "SCOPE", "MaskCallback", "MaskedUpdates", "SalUnConfig", "SalUnPlusPlusConfig", "TRuSTConfig", "TRuSTKVConfig",
           "TrustStep", "cip_penalty", "contrast_saliency", "csr_penalty", "double_backward_attention", "erase",
           "erase_kv", "erase_salun", "erase_salun_pp", "retain_prompt_list", "summed"]
