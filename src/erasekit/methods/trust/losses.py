"""TRuST's loss terms: the CIP and CSR regularisers and the saliency arithmetic of its masks.

- ``cip`` (hard): ``beta * sum(m * |theta|)``, an L1 (sparsity) pressure that drives
  the masked weights (whole neurons with row masks) toward zero; ``toward="original"``
  gives ``beta * sum(m * |theta - theta_0|)``, an L1 pressure on their change;
- ``csr`` (soft, Hessian): ``beta * || m * grad_theta f ||^2`` with
  ``f = ||eps*(x_t, c_target)||^2`` (mean over elements), computed with
  ``create_graph=True`` so the trainer's ``backward`` differentiates through the
  gradient: its gradient is the Hessian-vector product ``2 H_f (m * m * grad f)``.
  The forward that feeds it runs with the math SDPA kernel
  (`double_backward_attention`), because fused attention kernels have no double backward.
  ``csr_penalty_fd`` (extension) has the same value and approximates the same gradient by a
  central difference of two plain gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

import torch


def cip_penalty(params: Mapping[str, torch.Tensor], originals: Mapping[str, torch.Tensor],
                masks: Mapping[str, torch.Tensor], toward: str = "original") -> torch.Tensor:
    """CIP: sum over masked entries of ``|theta|`` (``toward="zero"``) or ``|theta - theta_0|`` ("original")."""
    if toward not in ("zero", "original"):
        raise ValueError(f"toward is 'zero' or 'original', got {toward!r}")
    terms = [(masks[n].to(p.dtype) * (p if toward == "zero" else p - originals[n]).abs()).sum()
             for n, p in params.items() if n in masks and bool(masks[n].any())]
    return torch.stack(terms).sum() if terms else next(iter(params.values())).new_zeros(())


def csr_penalty(f: torch.Tensor, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """|| m * grad_theta f ||^2 (CSR), differentiable (create_graph): its gradient is 2 H_f (m * m * grad f)."""
    names = [n for n in params if n in masks and bool(masks[n].any())]
    if not names:
        return f.new_zeros(())
    grads = torch.autograd.grad(f, [params[n] for n in names], create_graph=True, allow_unused=True)
    terms = [((masks[n].to(g.dtype) * g) ** 2).sum() for n, g in zip(names, grads) if g is not None]
    return torch.stack(terms).sum() if terms else f.new_zeros(())


def csr_penalty_fd(f: torch.Tensor, params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                   recompute, rel_step: float = 1e-3) -> torch.Tensor:
    """CSR whose gradient comes from a central difference instead of a double backward.

    With ``g = grad_theta f`` and ``v = m * m * g``, ``H_f v ~ (grad f(theta + e v) - grad f(theta - e v)) / 2e``
    (``e = rel_step * max(||theta||, 1) / ||v||``).  ``recompute(weights)`` re-evaluates ``f`` on the same
    sample with the masked tensors replaced by ``weights`` (by name; the model's own tensors are not
    touched, so graphs already built stay valid).  Returns a tensor whose value is ``||m * g||^2`` and
    whose gradient is ``2 H_f v``: the trainer's backward sees the regulariser of `csr_penalty`, from
    plain (fusable) backward passes.  ``f``'s graph is kept for the trainer's backward.
    """
    names = [n for n in params if n in masks and bool(masks[n].any())]
    if not names:
        return f.new_zeros(())
    grads = torch.autograd.grad(f, [params[n] for n in names], retain_graph=True, allow_unused=True)
    pairs = [(n, params[n], g) for n, g in zip(names, grads) if g is not None]
    if not pairs:
        return f.new_zeros(())
    with torch.no_grad():
        value = sum(((masks[n].to(g.dtype) * g) ** 2).sum() for n, _, g in pairs)
        v = [masks[n].to(g.dtype) ** 2 * g for n, _, g in pairs]
        v_norm = float(torch.sqrt(sum((x.double() ** 2).sum() for x in v)))
        p_norm = float(torch.sqrt(sum((p.detach().double() ** 2).sum() for _, p, _ in pairs)))
    if v_norm == 0.0:
        return value
    eps = rel_step * max(p_norm, 1.0) / v_norm
    sides = []
    for sign in (1.0, -1.0):
        moved = {n: (p.detach() + sign * eps * x).requires_grad_(True) for (n, p, _), x in zip(pairs, v)}
        with torch.enable_grad():
            sides.append(torch.autograd.grad(recompute(moved), list(moved.values()), allow_unused=True))
    linear = f.new_zeros(())
    for (_, p, _), a, b in zip(pairs, *sides):
        if a is not None and b is not None:
            linear = linear + (p * ((a - b) / eps).detach()).sum()  # gradient: 2 H v = (a - b) / eps
    return value + linear - linear.detach()


def double_backward_attention():
    """Context for a forward whose graph will be differentiated twice: the math SDPA kernel."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


def contrast_saliency(target: Mapping[str, torch.Tensor], kept: Mapping[str, torch.Tensor],
                      contrast: float) -> dict[str, torch.Tensor]:
    """``max(0, |g_t| / mean|g_t| - contrast * |g_r| / mean|g_r|)`` per tensor: salient for the target, not the parts."""
    def scaled(a: torch.Tensor) -> torch.Tensor:
        a = a.abs().float()
        return a / a.mean().clamp_min(torch.finfo(a.dtype).tiny)

    return {n: (scaled(target[n]) - contrast * scaled(kept[n])).clamp_min(0) for n in target}


def summed(grads: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Entry-wise sum of one or more gradient dicts (saliency over several samples).

    The first dict's tensors take the sum in place, so they must not be shared with anything else
    (`saliency` returns fresh tensors); the peak is then the running sum and one new gradient.
    """
    total: dict[str, torch.Tensor] | None = None
    for g in grads:
        if total is None:
            total = dict(g)
        else:
            for n in g:
                total[n].add_(g[n])
    if total is None:
        raise ValueError("no gradients to sum")
    return total
