"""TRuST (reconstruction) and SalUn: CSR's Hessian-vector product, masked updates, scope, retain term, scorers."""

import pytest
import torch
from torch import nn

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method
from erasekit.methods.saliency import (ScorerUnavailableError, ScoreSample, detector_terms, make_scorer,
                                       predicted_x0, saliency, saliency_masks)
from erasekit.methods.retain import KVMatchLoss, kv_drift, kv_forget
from erasekit.methods.trust import (MaskedUpdates, SalUnConfig, TRuSTConfig, cip_penalty, contrast_saliency,
                                    csr_penalty)
from erasekit.models.scopes import get_scope
from erasekit.models.text import encode_prompts
from erasekit.models.tiny import tiny_pipeline
from tiny_helpers import snapshot_weights

COMBO = ConceptSpec(name="red-circle", kind="object", targets=["red circle"], anchor="shape",
                    templates=["a {}", "a picture of a {}"], combination=["red", "circle"])
COND = ConceptSpec(name="circle-on-dark", kind="object", targets=["circle on a dark background"],
                   anchor="shape on a dark background", templates=["a {}"],
                   condition={"concept": "circle", "context": "on a dark background"})
PLAIN = ConceptSpec(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog", templates=["a photo of {}"])


class Interrupt(Exception):
    pass


pytestmark = pytest.mark.usefixtures("one_thread")



def tiny_cfg(cls=TRuSTConfig, **kw):
    base = dict(iterations=3, n_steps=2, pool_size=2, retain_pool_size=2, lr=1e-2, progress=False, scorer="forget")
    return cls(**{**base, **kw})



def _record():
    seen: list[tuple[int, dict[str, torch.Tensor]]] = []
    return seen, lambda step, masks: seen.append((step, masks))


# ------------------------------------------------------------------ CSR = Hessian-vector product
def test_csr_gradient_equals_finite_difference_hvp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x = torch.randn(11, 5, dtype=torch.float64)
    params = dict(net.named_parameters())
    masks = {n: torch.rand(p.shape) < 0.5 for n, p in params.items()}

    def f():
        return net(x).pow(2).mean()

    def grad_f():
        return torch.autograd.grad(f(), list(params.values()))

    # autograd: d/dtheta || m * grad f ||^2 through a double backward
    penalty = csr_penalty(f(), params, masks)
    auto = torch.autograd.grad(penalty, list(params.values()))
    # finite differences: 2 H v with v = m * m * grad f, H v ~ (grad f(theta + h v) - grad f(theta - h v)) / 2h
    v = [m.double() * m.double() * g for m, g in zip(masks.values(), grad_f())]
    h = 1e-5
    with torch.no_grad():
        for p, d in zip(params.values(), v):
            p.add_(h * d)
    plus = grad_f()
    with torch.no_grad():
        for p, d in zip(params.values(), v):
            p.sub_(2 * h * d)
    minus = grad_f()
    with torch.no_grad():
        for p, d in zip(params.values(), v):
            p.add_(h * d)
    fd = [2 * (a - b) / (2 * h) for a, b in zip(plus, minus)]
    for a, b in zip(auto, fd):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9), (a - b).abs().max()
    assert any(a.abs().max() > 1e-6 for a in auto)
    # the penalty's value is the masked squared gradient norm
    assert torch.isclose(penalty, sum(((m * g) ** 2).sum() for m, g in zip(masks.values(), grad_f())))


def test_cip_penalty_is_masked_l1_of_the_change():
    p = {"w": torch.tensor([1.0, 2.0, -3.0])}
    orig = {"w": torch.tensor([0.0, 0.0, 0.0])}
    assert float(cip_penalty(p, orig, {"w": torch.tensor([True, False, True])})) == 4.0
    assert float(cip_penalty(p, orig, {"w": torch.zeros(3, dtype=torch.bool)})) == 0.0


# ------------------------------------------------------------------ masks
def test_saliency_masks_threshold_topk_and_zero():
    g = {"a": torch.tensor([0.0, 0.1, -0.1, 0.1, 5.0, 0.2]), "z": torch.zeros(4)}
    m = saliency_masks(g, xi=2.0)
    assert m["a"].tolist() == [False, False, False, False, True, False]
    assert not m["z"].any()  # no gradient: nothing selected
    m = saliency_masks(g, topk=0.5)
    assert m["a"].tolist() == [False, False, False, False, True, True] or int(m["a"].sum()) == 3
    assert int(saliency_masks(g, topk=0.5)["a"].sum()) == 3
    mg = saliency_masks(g, xi=0.0, granularity="global")
    assert mg["a"][4] and not mg["z"].any()
    with pytest.raises(ValueError):
        saliency_masks(g, topk=1.5)


def test_masked_updates_stop_adam_momentum_outside_the_mask():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False)
    params = {"weight": lin.weight}
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    a = torch.zeros(3, 4, dtype=torch.bool)
    a[0] = True
    b = torch.zeros(3, 4, dtype=torch.bool)
    b[1] = True
    current = {"weight": a}
    x = torch.randn(8, 4)
    with MaskedUpdates(params, lambda: current):
        for mask in (a, b, b):
            current["weight"] = mask
            before = lin.weight.detach().clone()
            opt.zero_grad()
            lin(x).pow(2).sum().backward()
            opt.step()
            moved = lin.weight.detach() != before
            assert not (moved & ~mask).any()  # row 0 has momentum from step 1 but must not move later
            assert moved[mask].all()
    # outside the hook, a plain optimiser is untouched
    other = nn.Linear(2, 2)
    o2 = torch.optim.Adam(other.parameters(), lr=0.1)
    w = other.weight.detach().clone()
    other(torch.randn(3, 2)).sum().backward()
    o2.step()
    assert (other.weight.detach() != w).all()


def test_csr_by_central_difference_matches_the_double_backward():
    from erasekit.methods.trust.losses import csr_penalty_fd, double_backward_attention
    from erasekit.models.tiny import tiny_unet, tiny_unet_inputs

    torch.manual_seed(0)
    unet = tiny_unet("sd1")
    inputs = tiny_unet_inputs("sd1")
    params = {n: p for n, p in unet.named_parameters() if "attn2.to_" in n and n.endswith("weight")}
    for p in unet.parameters():
        p.requires_grad_(p in set(params.values()))
    masks = {n: torch.rand_like(p) < 0.3 for n, p in params.items()}
    before = {n: p.detach().clone() for n, p in params.items()}

    def f(weights=None):
        out = torch.func.functional_call(unet, weights, (), inputs) if weights else unet(**inputs)
        return out.sample.pow(2).mean()

    def value_and_grad(penalty):
        for p in params.values():
            p.grad = None
        value = penalty()
        value.backward()
        return float(value.detach()), torch.cat([p.grad.reshape(-1) for p in params.values()])

    with double_backward_attention():
        exact, g_exact = value_and_grad(lambda: csr_penalty(f(), params, masks))
    fd, g_fd = value_and_grad(lambda: csr_penalty_fd(f(), params, masks, f))
    assert fd == pytest.approx(exact, rel=1e-5)
    assert float((g_fd - g_exact).norm() / g_exact.norm()) < 1e-3  # 2 H v, from two plain gradients
    assert all(torch.equal(p.detach(), before[n]) for n, p in params.items())  # the weights are put back exactly


def test_top_k_mask_selects_what_torch_topk_selects_without_sorting():
    from erasekit.methods.saliency import top_k_mask

    torch.manual_seed(0)
    x = torch.rand(10_007)
    x[::7] = 0
    for k in (0, 1, 50, 5_003, 10_007):
        ref = torch.zeros_like(x, dtype=torch.bool)
        ref[torch.topk(x, k).indices] = True
        got = top_k_mask(x, k)
        assert int(got.sum()) == k and torch.equal(got & (x > 0), ref & (x > 0))
    # ties at the k-th value: the lowest indices are taken, exactly k in all
    assert top_k_mask(torch.tensor([3.0, 1.0, 2.0, 2.0, 2.0, 0.0]), 3).tolist() == [True, False, True, True,
                                                                                    False, False]


def test_global_top_k_over_tensors_equals_top_k_of_their_concatenation():
    from erasekit.methods.saliency import saliency_masks, top_k_mask, top_k_masks

    torch.manual_seed(0)
    grads = {"a": torch.randn(40, 30), "b": torch.randn(7), "c": torch.randn(3, 5, 11)}
    grads["a"][::3] = 0.5  # ties at the k-th magnitude, across tensors and signs
    grads["b"][:4] = -0.5
    grads["c"][0] = 0.0
    flat = torch.cat([g.reshape(-1) for g in grads.values()])
    for k in (0, 1, 300, 700, flat.numel()):
        ref, got, i = top_k_mask(flat.abs(), k), top_k_masks(grads, k), 0
        for n, g in grads.items():
            assert got[n].shape == g.shape and torch.equal(got[n].reshape(-1), ref[i : i + g.numel()])
            i += g.numel()
    # the global top half excludes zero saliency, as the concatenated threshold does
    masks = saliency_masks(grads, topk=0.5, granularity="global")
    k = int(round(0.5 * flat.numel()))
    ref = top_k_mask(flat.abs(), k) & (flat.abs() > 0)
    assert torch.equal(torch.cat([masks[n].reshape(-1) for n in grads]), ref)


def test_summed_adds_in_place_without_touching_the_later_dicts():
    from erasekit.methods.trust.losses import summed

    a, b, c = ({"w": torch.full((2,), float(v))} for v in (1, 2, 4))
    total = summed(iter([a, b, c]))
    assert total["w"].tolist() == [7.0, 7.0] and b["w"].tolist() == [2.0, 2.0] and c["w"].tolist() == [4.0, 4.0]


def test_masked_updates_copy_only_tensors_with_momentum_outside_the_mask():
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    torch.manual_seed(0)
    lin = nn.Linear(4, 3, bias=False)
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    a = torch.zeros(3, 4, dtype=torch.bool)
    a[0] = True
    b = torch.zeros(3, 4, dtype=torch.bool)
    b[1] = True
    current, copied = {"weight": a}, []
    x = torch.randn(8, 4)
    start = lin.weight.detach().clone()
    updates = MaskedUpdates({"weight": lin.weight}, lambda: current)
    with updates:
        handle = register_optimizer_step_pre_hook(lambda *_: copied.append(sorted(updates._saved)))
        for mask in (a, a, a, b, b):
            current["weight"] = mask
            opt.zero_grad()
            lin(x).pow(2).sum().backward()
            opt.step()
        handle.remove()
    # a static mask needs no copy; once the mask moves, row 0 has momentum outside it and is copied
    assert copied == [[], [], [], ["weight"], ["weight"]]
    moved = lin.weight.detach() != start
    assert moved[0].all() and moved[1].all() and not moved[2].any()


# ------------------------------------------------------------------ whole runs on the tiny pipeline
def test_trust_changes_only_masked_entries_and_masks_move(pipe):
    seen, cb = _record()
    cfg = tiny_cfg(mask_every=1, regularizer="csr")
    delta = get_method("trust").erase(pipe, COMBO, cfg, mask_callback=cb)
    assert [s for s, _ in seen] == [0, 1, 2]
    union = {n: torch.zeros_like(m) for n, m in seen[0][1].items()}
    for _, masks in seen:
        for n, m in masks.items():
            union[n] |= m
    assert any(not torch.equal(seen[0][1][n], seen[1][1][n]) for n in union)  # dynamic: the mask moves
    params = dict(pipe.unet.named_parameters())
    assert delta.names
    for name, new in delta.tensors.items():
        rel = name[len("unet."):]
        changed = new != params[rel].detach()
        assert changed.any()
        assert not (changed & ~union[rel]).any(), name
    metrics = delta.manifest.metrics
    assert metrics["mask_recomputations"] == 3 and metrics["iterations"] == 3
    assert metrics["mask_sizes"] == [sum(int(m.sum()) for m in masks.values()) for _, masks in seen]
    assert 0 < metrics["changed_fraction"] <= metrics["mask_union_fraction"] < 1
    assert metrics["scorer"] == "forget" and metrics["betas"] == {"csr": 1.0}


def test_saliency_momentum_keeps_the_mask_in_place(pipe):
    """A running mean of |g| moves the mask less between recomputations, so fewer entries change in all."""
    def union_and_moves(momentum):
        seen, cb = _record()
        cfg = tiny_cfg(iterations=6, saliency_momentum=momentum, regularizer="none")
        delta = get_method("trust").erase(pipe, PLAIN, cfg, mask_callback=cb)
        moved = sum(int((a[n] ^ b[n]).sum()) for (_, a), (_, b) in zip(seen, seen[1:]) for n in a)
        return delta.manifest.metrics["mask_union_fraction"], moved

    union_free, moved_free = union_and_moves(0.0)
    union_held, moved_held = union_and_moves(0.9)
    assert moved_held < moved_free and union_held < union_free
    with pytest.raises(ValueError):
        TRuSTConfig(saliency_momentum=1.0)


def test_mask_contrast_drops_entries_the_parts_rely_on(pipe):
    """An entry as salient for the retain prompts as for the target leaves the mask; one salient for the target only stays."""
    target = {"w": torch.tensor([[10.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])}
    kept = {"w": torch.tensor([[1.0, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])}
    plain = saliency_masks(target, xi=1.0)["w"]
    contrasted = saliency_masks(contrast_saliency(target, kept, 1.0), xi=1.0)["w"]
    assert plain[0, :2].tolist() == [True, True]
    assert contrasted[0, :2].tolist() == [True, False]

    def masks(contrast):
        seen, cb = _record()
        get_method("trust").erase(pipe, COMBO, tiny_cfg(iterations=1, mask_contrast=contrast), mask_callback=cb)
        return seen[0][1]

    assert any(not torch.equal(a, b) for a, b in zip(masks(0.0).values(), masks(1.0).values()))
    with pytest.raises(ValueError, match="mask_contrast"):
        TRuSTConfig(mask_contrast=-1.0)


def test_retain_mask_adds_the_entries_where_the_parts_drift(pipe):
    """With ``retain_mask`` the mask also takes the entries salient for the retain loss (the parts' drift)."""
    def run(flag):
        seen, cb = _record()
        delta = get_method("trust").erase(pipe, COMBO, tiny_cfg(iterations=4, retain_mask=flag), mask_callback=cb)
        return seen, delta

    (plain, d0), (mixed, d1) = run(False), run(True)
    # at the original weights the parts have not drifted, so the first mask is the target's alone
    assert all(torch.equal(plain[0][1][n], mixed[0][1][n]) for n in plain[0][1])
    assert d1.manifest.metrics["mask_union_fraction"] > d0.manifest.metrics["mask_union_fraction"]
    union = {n: torch.zeros_like(m) for n, m in mixed[0][1].items()}
    for _, masks in mixed:
        for n, m in masks.items():
            union[n] |= m
    params = dict(pipe.unet.named_parameters())
    for name, new in d1.tensors.items():  # still nothing outside the union of masks changes
        rel = name[len("unet."):]
        assert not ((new != params[rel].detach()) & ~union[rel]).any(), name
    with pytest.raises(ValueError, match="retain_mask"):  # nothing to keep: an error, not a silent no-op
        get_method("trust").erase(pipe, PLAIN, tiny_cfg(iterations=1, retain_mask=True))


def test_kv_drift_is_the_relative_change_of_keys_and_values():
    w0 = {"a.attn2.to_k.weight": torch.eye(2), "a.attn2.to_q.weight": torch.eye(2)}
    tokens = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(kv_drift(w0, w0, tokens)) == 0.0
    moved = {"a.attn2.to_k.weight": torch.tensor([[1.0, 0.0], [0.0, 1.5]]), "a.attn2.to_q.weight": 3 * torch.eye(2)}
    # (W - W0) E^T has one nonzero entry, 0.5 * 2 = 1; ||W0 E^T||^2 = 1 + 4; to_q is not a key/value
    assert float(kv_drift(moved, w0, tokens)) == pytest.approx(1.0 / 5.0)


def test_retain_kv_weight_holds_the_parts_keys_and_values(pipe):
    from erasekit.models.conditioning import encode_conditions

    tokens = encode_conditions(pipe, COMBO.retain_prompts()).embeds
    tokens = tokens.reshape(-1, tokens.shape[-1]).float()
    originals = {n: p.detach().clone() for n, p in get_scope("cross_attn_qkv").select(pipe.unet).items()}

    def drift(weight):
        delta = get_method("trust").erase(pipe, COMBO, tiny_cfg(iterations=6, gamma=0.0, retain_kv_weight=weight))
        edited = {**originals, **{n[len("unet."):]: t for n, t in delta.tensors.items()}}
        assert (delta.manifest.metrics["loss_retain_kv_mean"] > 0) == (weight > 0)
        return float(kv_drift(edited, originals, tokens))

    assert drift(100.0) < 0.5 * drift(0.0)  # measured 0.27x


def test_kv_forget_is_zero_when_sources_hit_the_anchors_original_keys_and_values():
    w0 = {"a.attn2.to_v.weight": torch.eye(2), "a.attn2.to_q.weight": torch.eye(2)}
    sources, anchors = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    # W0 s = (1, 0) against W0 a = (0, 2): ||(1, -2)||^2 / ||(0, 2)||^2 = 5 / 4; to_q is not a key/value
    assert float(kv_forget(w0, w0, sources, anchors)) == pytest.approx(5.0 / 4.0)
    mapped = {"a.attn2.to_v.weight": torch.tensor([[0.0, 0.0], [2.0, 0.0]]), "a.attn2.to_q.weight": w0["a.attn2.to_q.weight"]}
    assert float(kv_forget(mapped, w0, sources, anchors)) == 0.0


@pytest.mark.parametrize("paired", [True, False])
def test_kv_match_loss_from_moments_equals_the_direct_sum(paired):
    """`KVMatchLoss` (second moments, what training calls) has `kv_forget`'s value and gradient (`kv_drift`'s unpaired)."""
    g = torch.Generator().manual_seed(0)
    w0 = {"a.attn2.to_k.weight": torch.randn(6, 5, generator=g), "b.attn2.to_v.weight": torch.randn(4, 5, generator=g)}
    w = {n: (t + 0.1 * torch.randn(t.shape, generator=g)).requires_grad_() for n, t in w0.items()}
    sources, anchors = torch.randn(40, 5, generator=g), torch.randn(40, 5, generator=g)
    direct = kv_forget(w, w0, sources, anchors) if paired else kv_drift(w, w0, sources)
    fast = KVMatchLoss(w0, list(w0), sources, anchors if paired else None)(w)
    assert float(fast.detach()) == pytest.approx(float(direct.detach()), rel=1e-5)
    for a, b in zip(torch.autograd.grad(direct, list(w.values())), torch.autograd.grad(fast, list(w.values()))):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    if not paired:
        assert float(KVMatchLoss(w0, list(w0), sources)(w0)) == 0.0
    with pytest.raises(ValueError, match="to_k/to_v"):
        KVMatchLoss(w0, [], sources)


def test_kv_forget_loss_moves_the_targets_keys_and_values_on_the_mask_only(pipe):
    """``forget_loss="kv"``: the masked fine-tune pulls the target tokens' K/V to the anchor's original ones."""
    from erasekit.models.conditioning import encode_conditions

    def tokens(prompts):
        e = encode_conditions(pipe, prompts).embeds
        return e.reshape(-1, e.shape[-1]).float()

    sources, anchors = tokens(COMBO.target_prompts()), tokens(COMBO.anchor_prompts())
    originals = {n: p.detach().clone() for n, p in get_scope("cross_attn_kv").select(pipe.unet).items()}
    seen, record = _record()
    cfg = tiny_cfg(iterations=6, forget_loss="kv", scope="cross_attn_kv", regularizer="none", gamma=0.0, topk=0.3,
                   lr=1e-2)
    delta = get_method("trust").erase(pipe, COMBO, cfg, mask_callback=record)
    edited = {**originals, **{n[len("unet."):]: t for n, t in delta.tensors.items()}}
    assert float(kv_forget(edited, originals, sources, anchors)) < 0.9 * float(kv_forget(originals, originals, sources,
                                                                                        anchors))
    union = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in originals.items()}
    for _, masks in seen:
        for n, m in masks.items():
            union[n] |= m
    for n, t in edited.items():
        assert not bool(((t != originals[n]) & ~union[n]).any()), n  # changed only where a mask was
    with pytest.raises(ValueError, match="to_k/to_v"):
        get_method("trust").erase(pipe, COMBO, tiny_cfg(forget_loss="kv", scope="cross_attn_q"))


def test_mask_every_k_and_salun_static(pipe):
    seen, cb = _record()
    get_method("trust").erase(pipe, PLAIN, tiny_cfg(iterations=4, mask_every=2, regularizer="cip"), mask_callback=cb)
    assert [s for s, _ in seen] == [0, 2]

    seen, cb = _record()
    cfg = tiny_cfg(SalUnConfig, saliency_samples=2)
    delta = get_method("salun").erase(pipe, PLAIN, cfg, mask_callback=cb)
    assert [s for s, _ in seen] == [0]  # static: computed once, used for every step
    mask = seen[0][1]
    params = dict(pipe.unet.named_parameters())
    for name, new in delta.tensors.items():
        rel = name[len("unet."):]
        assert not ((new != params[rel].detach()) & ~mask[rel]).any()
    m = delta.manifest.metrics
    assert m["mask_recomputations"] == 1 and m["regularizer"] == "none" and m["betas"] == {}
    with pytest.raises(ValueError, match="static"):
        get_method("salun").erase(pipe, PLAIN, tiny_cfg(SalUnConfig, mask_every=1))


@pytest.mark.parametrize("regularizer", ["cip+csr", "none"])
def test_delta_in_scope_and_pipe_unchanged(pipe, regularizer):
    before = snapshot_weights(pipe, ('unet', 'text_encoder', 'vae'))
    flags = {n: p.requires_grad for n, p in pipe.vae.named_parameters()}
    delta = get_method("trust").erase(pipe, COND, tiny_cfg(regularizer=regularizer))
    scope = set(get_scope("cross_attn_qkv").select(pipe.unet, prefix="unet."))
    assert delta.names and set(delta.names) <= scope
    assert all(".attn2." in n and n.endswith(".weight") and n.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v")
               for n in delta.names)
    after = snapshot_weights(pipe, ('unet', 'text_encoder', 'vae'))
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert flags == {n: p.requires_grad for n, p in pipe.vae.named_parameters()}


@pytest.mark.parametrize("concept", [COMBO, COND], ids=["combination", "conditional"])
def test_retain_prompts_enter_the_loss(pipe, concept):
    with_retain = get_method("trust").erase(pipe, concept, tiny_cfg(gamma=1.0))
    m = with_retain.manifest.metrics
    assert m["retain_prompts"] == len(concept.retain_prompts()) > 0
    assert m["loss_retain_mean"] > 0  # the retain term is live once the weights have moved
    without = get_method("trust").erase(pipe, concept, tiny_cfg(gamma=0.0))
    assert without.manifest.metrics["retain_prompts"] == 0 and without.manifest.metrics["loss_retain_mean"] == 0
    assert with_retain.delta_id != without.delta_id
    plain = get_method("trust").erase(pipe, PLAIN, tiny_cfg(iterations=1))
    assert plain.manifest.metrics["retain_prompts"] == 0


def test_batch_size_draws_that_many_forget_and_retain_samples(pipe, monkeypatch):
    from erasekit.methods import trust
    calls = []
    draw = trust.TrustStep.draw
    monkeypatch.setattr(trust.TrustStep, "draw", lambda self, g, retain=False: calls.append(retain) or draw(self, g, retain))
    one = get_method("trust").erase(pipe, COMBO, tiny_cfg(gamma=1.0))
    per_step = (calls.count(False), calls.count(True))
    calls.clear()
    two = get_method("trust").erase(pipe, COMBO, tiny_cfg(gamma=1.0, batch_size=2))
    # each of 3 iterations: one saliency sample, then batch_size forget and batch_size retain samples
    assert per_step == (3 * 2, 3) and (calls.count(False), calls.count(True)) == (3 * 3, 3 * 2)
    assert one.delta_id != two.delta_id
    assert "batch_size" not in tiny_cfg().fingerprint()  # at its default it leaves earlier runs' ids alone
    calls.clear()
    get_method("trust").erase(pipe, COMBO, tiny_cfg(gamma=1.0, retain_batch_size=3))
    # retain_batch_size sets the retain draws alone: one forget sample per step, three retain samples
    assert (calls.count(False), calls.count(True)) == (3 * 2, 3 * 3)
    assert "retain_batch_size" not in tiny_cfg().fingerprint()
    with pytest.raises(ValueError):
        tiny_cfg(retain_batch_size=0)


def test_esd_forget_target_is_the_frozen_models_negatively_guided_prediction(pipe, monkeypatch):
    from erasekit.methods import trust
    from erasekit.methods.losses import esd_target
    from erasekit.models.conditioning import cat_conditions, encode_conditions
    from erasekit.models.unet_io import predict

    seen = []
    reference = trust.TrustStep.forget_reference
    monkeypatch.setattr(trust.TrustStep, "forget_reference",
                        lambda self, z, t, cond, anchors: seen.append((z, t, cond, anchors, reference(self, z, t, cond, anchors)))
                        or seen[-1][-1])
    esd = get_method("trust").erase(pipe, PLAIN, tiny_cfg(forget_target="esd", negative_guidance=2.0))
    assert seen  # every iteration's forgetting loss went through it
    z, t, cond, anchors, got = seen[-1]  # the last iteration: the pipe's live weights had moved, the target did not
    uncond = cat_conditions([encode_conditions(pipe, [""])] * z.shape[0])
    with torch.no_grad():  # the pipe holds the original weights again after erase
        want = esd_target(predict(pipe.unet, z, t, cond), predict(pipe.unet, z, t, uncond), 2.0)
        anchor_pred = predict(pipe.unet, z, t, anchors)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, anchor_pred)
    seen.clear()
    anchor = get_method("trust").erase(pipe, PLAIN, tiny_cfg())
    torch.testing.assert_close(seen[-1][-1], predict(pipe.unet, *seen[-1][:2], seen[-1][3]).detach())
    assert esd.delta_id != anchor.delta_id
    assert "forget_target" not in tiny_cfg().fingerprint()  # at its default it leaves earlier runs' ids alone


def test_partial_latents_and_topk(pipe):
    delta = get_method("trust").erase(pipe, PLAIN, tiny_cfg(latents="partial", topk=0.01, iterations=2,
                                                                mask_unit="entry"))
    m = delta.manifest.metrics
    assert m["latents"] == "partial" and m["mask_recomputations"] == 2
    qkv = get_scope("cross_attn_qkv").select(pipe.unet)
    assert all(0 < s <= sum(round(0.01 * p.numel()) for p in qkv.values()) for s in m["mask_sizes"])


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_resume_with_dynamic_masks_is_exact(pipe, tmp_path, momentum):
    cfg = tiny_cfg(iterations=4, mask_every=1, checkpoint_dir=str(tmp_path), checkpoint_every=2,
                   saliency_momentum=momentum)
    full = get_method("trust").erase(pipe, COMBO, cfg.model_copy(update={"checkpoint_dir": str(tmp_path / "a")}))

    def stop(step, masks):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        get_method("trust").erase(pipe, COMBO, cfg.model_copy(update={"checkpoint_dir": str(tmp_path / "b")}),
                                  mask_callback=stop)
    resumed = get_method("trust").erase(
        pipe, COMBO, cfg.model_copy(update={"checkpoint_dir": str(tmp_path / "b"), "resume": True}))
    assert resumed.manifest.metrics["resumed_from"] == 2
    assert set(full.names) == set(resumed.names)
    assert all(torch.equal(full.tensors[n], resumed.tensors[n]) for n in full.names)
    assert resumed.manifest.metrics["mask_sizes"] == full.manifest.metrics["mask_sizes"]


# ------------------------------------------------------------------ scorers
def _sample(pipe, prompt="a red circle"):
    emb = encode_prompts(pipe, [prompt])
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 8, 8, generator=g)
    out = pipe.unet(z, 500, encoder_hidden_states=emb).sample
    return ScoreSample(z=z, t=500, cond=emb, prompt=prompt, output=out, reference=torch.zeros_like(out))


def _qkv(pipe):
    return get_scope("cross_attn_qkv").select(pipe.unet)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_x0_respects_prediction_type(prediction_type):
    from diffusers import DDIMScheduler

    from erasekit.models.tiny import SD_SCHEDULER_CONFIG

    sched = DDIMScheduler(**SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([700, 700])
    z = sched.add_noise(x0, noise, t)
    out = noise if prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    assert torch.allclose(predicted_x0(out, z, 700, sched), x0, atol=1e-4)


def test_detector_scorer_is_differentiable_through_the_vae():
    from erasekit.world.detector import ShapesDetector

    pipe = tiny_pipeline(prediction_type="v_prediction")
    torch.manual_seed(0)
    name, scorer = make_scorer("detector", pipe, COMBO, detector=ShapesDetector(width=8))
    assert name == "detector"
    score = scorer(_sample(pipe))
    assert 0 < float(score.detach()) < 1
    grads = saliency(score, _qkv(pipe))
    assert any(float(g.abs().max()) > 0 for g in grads.values())
    assert all(p.requires_grad for p in pipe.vae.parameters())  # flags restored


def test_detector_terms_of_shapes_concepts():
    from erasekit.concepts.packs import get_concept

    assert detector_terms(get_concept("shapes/red-circle")) == [("color", "red"), ("shape", "circle")]
    assert detector_terms(get_concept("shapes/circle-on-dark")) == [("shape", "circle"), ("background", "dark")]
    assert detector_terms(get_concept("shapes/star")) == [("shape", "star")]
    with pytest.raises(ScorerUnavailableError):
        detector_terms(PLAIN)
    # free text of one word per attribute maps (so the Shapes preset's stopping rule can measure it)
    from erasekit.cli.free_text import free_text_concept

    assert detector_terms(free_text_concept("a red star", world="shapes")) == [("color", "red"), ("shape", "star")]
    assert detector_terms(free_text_concept("crimson", world="shapes")) == [("color", "red")]
    for text in ("cowboy hat", "red blue"):  # unknown words; two values of one attribute
        with pytest.raises(ScorerUnavailableError):
            detector_terms(free_text_concept(text, world="shapes"))


def test_clip_scorer_missing_weights_one_line_and_auto_fallback(pipe, tmp_path):
    with pytest.raises(ScorerUnavailableError) as err:
        make_scorer("clip", pipe, PLAIN, clip_model=str(tmp_path / "no-clip"))
    assert "\n" not in str(err.value) and "clip" in str(err.value)
    name, _ = make_scorer("auto", pipe, PLAIN, clip_model=str(tmp_path / "no-clip"))
    assert name == "forget"
    with pytest.raises(ValueError, match="unknown saliency scorer"):
        make_scorer("nope", pipe, PLAIN)


def test_clip_scorer_with_a_local_tiny_clip(pipe, tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from erasekit.world.assets_paths import TOKENIZER_DIR

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR)).save_pretrained(tmp_path / "clip")
    name, scorer = make_scorer("clip", pipe, COMBO, clip_model=str(tmp_path / "clip"))
    score = scorer(_sample(pipe))
    assert name == "clip" and -100 <= float(score.detach()) <= 100
    assert any(float(g.abs().max()) > 0 for g in saliency(score, _qkv(pipe)).values())


def test_registry_and_presets():
    assert get_method("trust").config_cls is TRuSTConfig and get_method("salun").config_cls is SalUnConfig
    c = TRuSTConfig()
    assert (c.xi, c.mask_every, c.regularizer, c.lr, c.scope) == (2.0, 1, "csr", 1e-5, None)
    s = SalUnConfig()
    assert s.static and s.regularizer == "none" and s.scorer == "forget"
    assert TRuSTConfig.preset("shapes").n_steps == 25 and SalUnConfig.preset("shapes").iterations == 150
    shapes = TRuSTConfig.preset("shapes")  # one Shapes preset: sampling, lr, the K/V term and the stopping rule
    assert (shapes.n_steps, shapes.lr, shapes.stop_ratio, shapes.gamma) == (25, 1e-2, 0.1, 1.0)
    assert (shapes.stop_prompts, shapes.retain_preserve, shapes.retain_kv_weight) == ("in-context", True, 0.03)
    assert (shapes.xi, shapes.mask_every, shapes.regularizer) == (c.xi, c.mask_every, c.regularizer)  # the paper's
    assert (c.mask_unit, c.stop_ratio, c.cip_toward) == ("neuron", None, "zero")
    pp = get_method("salun++").config_cls()
    assert (pp.mask_every, pp.saliency_samples, pp.mask_unit, pp.regularizer) == (1, 1, "entry", "none")
    assert SalUnConfig().mask_unit == "entry" and SalUnConfig().saliency_momentum == 0.0
    assert TRuSTConfig(regularizer="cip+csr", beta=0.5).betas() == {"cip": 0.5, "csr": 0.5}
    with pytest.raises(ValueError):
        TRuSTConfig(mask_every=-1)


def test_none_override_replaces_a_preset_value():
    """``topk=None`` over the preset's top-k mask means "use the xi threshold", not "keep the preset"."""
    preset = dict(TRuSTConfig.PRESETS["shapes"])
    TRuSTConfig.PRESETS["shapes"] = {**preset, "topk": 0.2}
    try:
        assert TRuSTConfig.for_world("shapes").topk == 0.2
        assert TRuSTConfig.for_world("shapes", topk=None).topk is None
    finally:
        TRuSTConfig.PRESETS["shapes"] = preset


@pytest.mark.usefixtures("all_threads")
@pytest.mark.slow
def test_trust_kv_shapes_preset_erases_a_colour_and_keeps_the_others(shapes_pipe, detector):
    """``trust-kv`` (the K/V-space forgetting loss) erases red on the Shapes model and keeps the other colours,
    which TRuST with the spec's noise-space loss does not (red 1.00 -> 0.91).  Measured (32 prompts per tier,
    96 preservation prompts): 1.00 -> 0.00/0.00/0.06 at 0.94 in 118 s (CSR's double backward is most of it).
    Here, on two threads: 1.00 -> 0.00 on 24 explicit prompts, the other colours at 0.93 of the original on 96
    preservation prompts.  The first 48 of those alone read 0.896 (43 of 48): one image is 0.02 there, so the
    test keeps the 96 the measurement used rather than judge a 0.9 bar on 48."""
    from erasekit.concepts.packs import get_concept
    from shapes_helpers import rates_before_and_after

    info = get_method("trust-kv")
    delta = info.erase(shapes_pipe, get_concept("red"), info.config_cls.for_world("shapes", progress=False))
    assert delta.manifest.config["forget_loss"] == "kv" and delta.manifest.metrics["loss_retain_kv_mean"] > 0
    t0, k0, t1, k1 = rates_before_and_after(shapes_pipe, detector, delta, "red", n_keep=96)
    assert t1 <= t0 / 5, (t0, t1)
    assert k1 >= 0.9 * k0, (k0, k1)
