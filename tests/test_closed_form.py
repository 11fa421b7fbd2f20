"""The closed-form K/V edit is the exact minimiser of its objective; [EoT] indices come from ids."""

import torch

from erasekit.methods.closed_form import closed_form_edit, second_moment
from erasekit.models.text import first_eot_index


def _objective(Wn, W, c, v, P, eta, lam):
    fit = ((c @ Wn.T - v) ** 2).sum() / c.shape[0]
    pres = eta * torch.trace((Wn - W) @ P @ (Wn - W).T)
    return fit + pres + lam * ((Wn - W) ** 2).sum()


def test_closed_form_is_the_exact_minimiser():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(7, 5, generator=g, dtype=torch.float64)
    c = torch.randn(3, 5, generator=g, dtype=torch.float64)
    v = torch.randn(3, 7, generator=g, dtype=torch.float64)
    P = second_moment(torch.randn(20, 5, generator=g, dtype=torch.float64))
    eta, lam = 0.3, 0.05
    Wn = closed_form_edit(W, c, v, P, eta, lam).requires_grad_(True)
    J = _objective(Wn, W, c, v, P, eta, lam)
    (grad,) = torch.autograd.grad(J, Wn)
    assert grad.abs().max() < 1e-9
    with torch.no_grad():
        for _ in range(20):
            other = Wn + 1e-3 * torch.randn(W.shape, generator=g, dtype=torch.float64)
            assert _objective(other, W, c, v, P, eta, lam) > J


def test_sources_map_to_targets_and_preserved_directions_stay():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 4, generator=g, dtype=torch.float64)
    c = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64)
    v = torch.randn(2, 6, generator=g, dtype=torch.float64)
    keep = torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 1.0]], dtype=torch.float64)
    Wn = closed_form_edit(W, c, v, second_moment(keep), eta=1.0, lam=0.0)
    assert torch.allclose(c @ Wn.T, v, atol=1e-9)
    assert torch.allclose(keep @ Wn.T, keep @ W.T, atol=1e-9)


def test_result_keeps_weight_dtype():
    W = torch.randn(4, 3, dtype=torch.float32)
    out = closed_form_edit(W, torch.randn(2, 3), torch.randn(2, 4), None, eta=0.0, lam=0.1)
    assert out.dtype == torch.float32 and out.shape == W.shape


def test_first_eot_index_comes_from_ids_not_word_counts(shapes_pipe):
    tok = shapes_pipe.tokenizer
    prompts = ["a photo of a supercalifragilistic hippopotamus", "a circle", ""]
    ids = tok(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    idx = first_eot_index(ids, tok.eos_token_id)
    for row, i, p in zip(ids, idx.tolist(), prompts):
        n_tokens = len(tok(p).input_ids) - 2
        assert i == n_tokens + 1 and int(row[i]) == tok.eos_token_id
        assert all(int(t) != tok.eos_token_id for t in row[:i])
    words = len(prompts[0].split())
    assert idx[0] != words + 1  # counting words (the released code's bug) would be wrong here
