"""The closed-form cross-attention edit shared by UCE and TRCE stage 1.

For a projection ``W`` (out x in) of a cross-attention layer, source
embeddings ``c_i`` mapped to target values ``v_i`` and preserved embeddings
``c_j`` (summarised by their second-moment matrix), the edited weight is

    W' = (S_vc + eta * W C_p + lam * W) (S_cc + eta * C_p + lam * I)^-1

with ``S_vc = mean_i v_i c_i^T``, ``S_cc = mean_i c_i c_i^T`` and
``C_p = mean_j c_j c_j^T``: sums are normalised by their counts so ``eta``
does not depend on how many prompts were used (``normalise=False`` keeps the
plain sums, as UCE's released code does).  Solved with a linear solve in
float64, never an explicit inverse.

SDXL: the UNet's cross-attention reads, at every token, the concatenation of
both text encoders' (penultimate-layer) hidden states, so each row (a token or
the [EoT]) is the concatenated vector (2048-d on SDXL), taken at positions located from the
token ids; both tokenizers must put the first end-of-text token at the same
position (`first_eot_positions` checks it and raises otherwise).  SDXL is ALSO
conditioned by the second encoder's pooled embedding, which enters through the
time embedding (``text_embeds``), not through cross-attention: a K/V edit cannot
change it.  This is a deliberate choice, kept so the edit stays the paper's
closed form on cross-attention only: the concept's pooled embedding still
reaches the UNet, as a global signal in every block, so the edit may leave
more of the concept on SDXL than on SD-1.x/2.x (not measured: only tiny random
SDXL pipelines exist offline here).  A fine-tuning stage sees the pooled
embedding (``trce`` = stage 1 + stage 2) when that matters.
"""

from __future__ import annotations

import torch


def second_moment(embeddings: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """mean_j c_j c_j^T for embeddings (N, D), in float64 (``normalise=False``: the sum)."""
    c = embeddings.double()
    return c.T @ c / max(1, c.shape[0]) if normalise else c.T @ c


def closed_form_edit(weight: torch.Tensor, sources: torch.Tensor, values: torch.Tensor,
                     preserve_moment: torch.Tensor | None, eta: float, lam: float = 0.0,
                     normalise: bool = True) -> torch.Tensor:
    """Edited weight (same dtype/device as ``weight``).

    weight: (out, in); sources: (n, in) embeddings c_i; values: (n, out) targets v_i;
    preserve_moment: (in, in) mean c_j c_j^T (its sum with ``normalise=False``) or None.
    ``normalise=False`` uses the sums over the sources, as UCE's released code does.
    """
    if sources.shape[0] == 0:
        raise ValueError("closed-form edit needs at least one source embedding")
    W = weight.detach().double().cpu()
    c = sources.detach().double().cpu()
    v = values.detach().double().cpu()
    n = c.shape[0] if normalise else 1
    lhs = v.T @ c / n  # (out, in)
    rhs = c.T @ c / n  # (in, in)
    if preserve_moment is not None and eta > 0:
        P = preserve_moment.double().cpu()
        lhs = lhs + eta * (W @ P)
        rhs = rhs + eta * P
    if lam > 0:
        lhs = lhs + lam * W
        rhs = rhs + lam * torch.eye(rhs.shape[0], dtype=rhs.dtype)
    # W' rhs = lhs  <=>  rhs^T W'^T = lhs^T  (rhs is symmetric)
    new = torch.linalg.solve(rhs.T, lhs.T).T
    return new.to(dtype=weight.dtype, device=weight.device)


@torch.no_grad()
def edit_cross_attention_kv(unet, sources: torch.Tensor, anchors: torch.Tensor,
                            preserve_moment: torch.Tensor | None, eta: float, lam: float,
                            normalise: bool = True) -> list[str]:
    """Apply the closed form to ``to_k`` and ``to_v`` of every cross-attention layer, in place.

    ``sources`` (n, D) are mapped to what the ORIGINAL weights give for
    ``anchors`` (n, D).  Returns the qualified names ('unet.' prefix) edited.
    """
    from ..models.scopes import cross_attention_layers

    if sources.shape != anchors.shape:
        raise ValueError(f"sources {tuple(sources.shape)} and anchors {tuple(anchors.shape)} must align")
    edited = []
    for name, attn in cross_attention_layers(unet).items():
        for proj_name in ("to_k", "to_v"):
            proj = getattr(attn, proj_name)
            W = proj.weight
            values = anchors.to(W.device, torch.float64) @ W.detach().double().T
            W.copy_(closed_form_edit(W, sources, values, preserve_moment, eta, lam, normalise))
            edited.append(f"unet.{name}.{proj_name}.weight")
    return edited


def cross_attention_kv_names(unet) -> list[str]:
    from ..models.scopes import get_scope

    return list(get_scope("cross_attn_kv").select(unet, prefix="unet.").keys())
