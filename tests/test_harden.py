"""Closed-form hardening. RECE: the edit equals its equation, it undoes the adversarial embedding, and it
composes. proj: the directions solve their eigenproblem, the edit equals its equation, and no embedding
reaches the concept through the blinded directions, unlike after a closed-form edit."""

import numpy as np
import pytest
import torch

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method
from erasekit.methods.closed_form import cross_attention_kv_names, second_moment
from erasekit.methods.harden import ProjConfig, RECEConfig, adversarial_embedding, harden, reproduction_error
from erasekit.methods.harden.proj import blind, concept_directions
from erasekit.models.delta import WeightDelta, apply_delta, fingerprint, revert_delta, snapshot
from erasekit.models.text import encode_prompts
from erasekit.models.tiny import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

CONCEPT = ConceptSpec(name="church", kind="object", targets=["church", "chapel"], anchor="building",
                      preserve=["a red car", "a dog in a park"])


@pytest.fixture(scope="module")
def sd1():
    return tiny_pipeline("sd1")


@pytest.fixture(scope="module")
def uce_delta(sd1):
    info = get_method("uce")
    return info.erase(sd1, CONCEPT, info.config_cls.preset("sd"))


def _kv(pipe, values=None):
    names = cross_attention_kv_names(pipe.unet)
    got = snapshot(pipe, names) if values is None else values
    return names, [got[n].double().numpy() for n in names]


def _assert_rece_edit(hardened, names, weights, adv, anc, pre):
    """Each K/V of ``hardened`` equals RECE's edit of ``weights`` (release weights 1 / 0.1 / 0.1), written out."""
    d = weights[0].shape[1]
    for name, w in zip(names, weights):
        lhs = 0.1 * w + 1.0 * (anc @ w.T).T @ adv + 0.1 * w @ (pre.T @ pre)
        rhs = 0.1 * np.eye(d) + 1.0 * adv.T @ adv + 0.1 * pre.T @ pre
        expected = lhs @ np.linalg.inv(rhs)
        got = hardened.tensors[name].double().numpy()
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-4, name


def test_one_round_equals_rece_equation(sd1, uce_delta):
    config = RECEConfig(epochs=1, preserve="concept", anchor="concept", embedding_reg=1e-2)
    names, base = _kv(sd1)
    apply_delta(sd1, uce_delta)
    _, erased = _kv(sd1)
    revert_delta(sd1, uce_delta)
    hardened = harden(sd1, uce_delta, CONCEPT, config)

    d = base[0].shape[1]
    src = encode_prompts(sd1, list(CONCEPT.targets)).reshape(-1, d).double().numpy()
    anc = encode_prompts(sd1, [CONCEPT.anchor] * 2).reshape(-1, d).double().numpy()
    pre = encode_prompts(sd1, CONCEPT.preserve).reshape(-1, d).double().numpy()
    # e* = (sum W'^T W' + gamma I)^-1 (sum W'^T W) c, written with an explicit inverse
    gram = sum(w.T @ w for w in erased) + 1e-2 * np.eye(d)
    cross = sum(wn.T @ wo for wn, wo in zip(erased, base))
    adv = src @ (np.linalg.inv(gram) @ cross).T
    _assert_rece_edit(hardened, names, erased, adv, anc, pre)


def test_a_text_encoder_delta_is_hardened_on_the_rows_its_encoder_gives(sd1):
    """RECE after a delta that changed the text encoder: the anchors and held prompts are the rows the
    hardened model reads (the delta's encoder), the concept rows the base model's."""
    name = "text_encoder.final_layer_norm.weight"
    base = snapshot(sd1, [name])
    te_delta = WeightDelta.from_state_dicts(base, {name: base[name] * 1.5}, method="hand-made")
    config = RECEConfig(epochs=1, preserve="concept", anchor="concept", embedding_reg=1e-2)
    names, kv = _kv(sd1)
    d = kv[0].shape[1]
    src = encode_prompts(sd1, list(CONCEPT.targets)).reshape(-1, d).double().numpy()
    apply_delta(sd1, te_delta)
    anc = encode_prompts(sd1, [CONCEPT.anchor] * 2).reshape(-1, d).double().numpy()
    pre = encode_prompts(sd1, CONCEPT.preserve).reshape(-1, d).double().numpy()
    revert_delta(sd1, te_delta)
    hardened = harden(sd1, te_delta, CONCEPT, config)
    assert torch.equal(hardened.tensors[name], base[name] * 1.5)
    # the K/V are untouched by the delta: e* = (sum W^T W + gamma I)^-1 (sum W^T W) c
    gram = sum(w.T @ w for w in kv)
    adv = src @ (np.linalg.inv(gram + 1e-2 * np.eye(d)) @ gram).T
    _assert_rece_edit(hardened, names, kv, adv, anc, pre)


def test_hardening_makes_the_adversarial_embedding_fail(sd1, uce_delta):
    names, base = _kv(sd1)
    base_t = [torch.from_numpy(w) for w in base]
    rows = encode_prompts(sd1, list(CONCEPT.targets)).reshape(-1, base[0].shape[1]).double()

    def best_attack_error(values):
        current = [values[n].double() for n in names]
        adv = adversarial_embedding(current, base_t, rows, 1e-3)
        return reproduction_error(current, base_t, adv, rows)

    erased = {**snapshot(sd1, names), **uce_delta.tensors}
    hardened = harden(sd1, uce_delta, CONCEPT, RECEConfig(epochs=3, anchor="concept", preserve="concept"))
    before, after = best_attack_error(erased), best_attack_error({**erased, **hardened.tensors})
    assert after > 2 * before, (before, after)
    rounds = hardened.manifest.metrics["rounds"]
    assert len(rounds) == 3 and all(r["reproduction_error_after"] > r["reproduction_error_before"] for r in rounds)


def test_composed_delta_keeps_the_base_delta_and_records_the_chain(sd1):
    # a base delta outside the K/V (a conv weight) must come through unchanged
    name = "unet.conv_in.weight"
    base = snapshot(sd1, [name])
    edited = {name: base[name] + 0.01}
    conv_delta = WeightDelta.from_state_dicts(base, edited, method="hand-made")
    before = {n: fingerprint(t) for n, t in snapshot(sd1, [name, *cross_attention_kv_names(sd1.unet)]).items()}
    composed = harden(sd1, conv_delta, CONCEPT, RECEConfig())
    after = {n: fingerprint(t) for n, t in snapshot(sd1, list(before)).items()}
    assert before == after  # the pipeline is left as found
    assert torch.equal(composed.tensors[name], edited[name])
    assert set(cross_attention_kv_names(sd1.unet)) <= set(composed.names)
    chain = composed.manifest.config["chain"]
    assert chain == [{"method": "hand-made", "delta_id": conv_delta.delta_id}, {"method": "harden:rece"}]
    assert composed.manifest.method == "hand-made+rece"
    apply_delta(sd1, composed)  # applies on the BASE model
    revert_delta(sd1, composed)
    assert {n: fingerprint(t) for n, t in snapshot(sd1, list(before)).items()} == before


def test_hardening_a_hardened_delta_extends_its_chain(sd1, uce_delta):
    once = harden(sd1, uce_delta, CONCEPT, RECEConfig(epochs=1))
    twice = harden(sd1, once, CONCEPT, RECEConfig(epochs=1))
    assert twice.manifest.method == "uce+rece+rece"
    assert twice.manifest.config["chain"] == [{"method": "uce", "delta_id": uce_delta.delta_id},
                                              {"method": "harden:rece", "delta_id": once.delta_id},
                                              {"method": "harden:rece"}]
    # the second round starts from the first's weights: its K/V differ from the once-hardened delta's
    kv = cross_attention_kv_names(sd1.unet)
    assert any(not torch.equal(once.tensors[n], twice.tensors[n]) for n in kv)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_other_families(family):
    pipe = tiny_pipeline(family)
    composed = harden(pipe, None, CONCEPT, RECEConfig(epochs=2))
    assert composed.manifest.method == "rece"
    assert set(composed.names) == set(cross_attention_kv_names(pipe.unet))
    assert all(torch.isfinite(t).all() for t in composed.tensors.values())


def test_per_concept_settings_follow_the_release():
    from erasekit.concepts.packs import get_concept

    nudity, violence = RECEConfig().for_concept(get_concept("sd/nudity")), RECEConfig().for_concept(get_concept("sd/violence"))
    assert (nudity.epochs, nudity.embedding_reg) == (3, 0.1)
    assert (violence.epochs, violence.embedding_reg) == (2, 0.1)
    assert RECEConfig().for_concept(CONCEPT) == RECEConfig()


def test_cli_hardens_a_saved_delta(tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli import app

    runner = CliRunner()
    base = tmp_path / "uce"
    assert runner.invoke(app, ["erase", "--method", "uce", "--concept", "circle", "--out", str(base)]).exit_code == 0
    before = (base / "delta.safetensors").read_bytes()
    res = runner.invoke(app, ["harden", "--delta", str(base), "--concept", "circle", "--out", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    composed = WeightDelta.load(tmp_path / "h")
    assert composed.manifest.method == "uce+rece"
    assert composed.manifest.config["chain"][0] == {"method": "uce", "delta_id": WeightDelta.load(base).delta_id}
    assert composed.manifest.config["harden"]["anchor"] == "concept"  # the Shapes preset
    assert (base / "delta.safetensors").read_bytes() == before
    for args, needle in ((["--out", str(base)], "must differ"), (["--variant", "x", "--out", str(tmp_path / "y")], "unknown")):
        res = runner.invoke(app, ["harden", "--delta", str(base), "--concept", "circle", *args])
        assert res.exit_code == 2 and needle in res.output
    assert (base / "delta.safetensors").read_bytes() == before


def test_a_closed_form_kv_edit_is_undone_by_one_embedding(sd1, uce_delta):
    """UCE's edit is W_l M with one M for every layer, so M^-1 c restores every layer's K/V at once."""
    names, base = _kv(sd1)
    base_t = [torch.from_numpy(w) for w in base]
    erased = {**snapshot(sd1, names), **uce_delta.tensors}
    current = [erased[n].double() for n in names]
    rows = encode_prompts(sd1, list(CONCEPT.targets)).reshape(-1, base[0].shape[1]).double()
    adv = adversarial_embedding(current, base_t, rows, 1e-10)
    assert reproduction_error(current, base_t, rows, rows) > 1e-3  # the edit did change the concept's K/V
    assert reproduction_error(current, base_t, adv, rows) < 1e-8


def test_attacked_prompts_join_the_closed_form_edit_as_source_rows(sd1, uce_delta):
    """attack_rounds: the soft-prompt attack's prompts on the erased model are edited toward the same
    soft tokens before the anchor, in the same sums as RECE's own rows."""
    from erasekit.methods.harden.rece import PromptAttack

    attack = {"attack_steps": 2, "attack_lr": 0.05, "attack_tokens": 2, "n_steps": 4, "attack_latents": "per_round"}
    config = RECEConfig(epochs=1, preserve="concept", anchor="concept", embedding_reg=1e-2, attack_rounds=2, attack=attack)
    names, base = _kv(sd1)
    originals = snapshot(sd1, sorted(set(names) | set(uce_delta.names)))
    apply_delta(sd1, uce_delta)
    _, erased = _kv(sd1)
    sources, anchors = list(CONCEPT.targets), [CONCEPT.anchor] * 2
    base_unet = {n[len("unet."):]: t for n, t in originals.items() if n.startswith("unet.")}
    att_src, att_anc = PromptAttack(sd1, CONCEPT, sources, anchors, base_unet, config).rows(2)
    revert_delta(sd1, uce_delta)
    hardened = harden(sd1, uce_delta, CONCEPT, config)
    assert len(hardened.manifest.metrics["attack_rounds"]) == 2

    d = base[0].shape[1]
    src = encode_prompts(sd1, sources).reshape(-1, d).double().numpy()
    anc = np.concatenate([encode_prompts(sd1, anchors).reshape(-1, d).double().numpy(), att_anc.numpy()])
    pre = encode_prompts(sd1, CONCEPT.preserve).reshape(-1, d).double().numpy()
    gram = sum(w.T @ w for w in erased) + 1e-2 * np.eye(d)
    cross = sum(wn.T @ wo for wn, wo in zip(erased, base))
    rows = np.concatenate([src @ (np.linalg.inv(gram) @ cross).T, att_src.numpy()])
    for name, w in zip(names, erased):
        lhs = 0.1 * w + (anc @ w.T).T @ rows + 0.1 * w @ (pre.T @ pre)
        expected = lhs @ np.linalg.inv(0.1 * np.eye(d) + rows.T @ rows + 0.1 * pre.T @ pre)
        got = hardened.tensors[name].double().numpy()
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-4, name
    # the attacked prompts' keys and values move toward their anchored versions'
    for name, w in zip(names, erased):
        new = hardened.tensors[name].double().numpy()
        target = att_anc.numpy() @ w.T
        assert np.linalg.norm(att_src.numpy() @ new.T - target) < 0.7 * np.linalg.norm(att_src.numpy() @ w.T - target), name


def test_directions_solve_the_generalised_eigenproblem():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(60, 6, generator=g, dtype=torch.float64)
    sc, sp = second_moment(a), second_moment(b)
    basis = concept_directions(sc, sp, 2, ridge=0.0)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-10)
    mu, vectors = np.linalg.eig(np.linalg.solve(sp.numpy(), sc.numpy()))
    top = np.real(vectors[:, np.argsort(-np.real(mu))[:2]])
    # the basis spans the same plane as the two top generalised eigenvectors
    residual = top - basis.numpy() @ (basis.numpy().T @ top)
    assert np.linalg.norm(residual) < 1e-8 * np.linalg.norm(top)


def test_blind_equals_its_equation_and_kills_the_directions():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 6, generator=g, dtype=torch.float64)
    held = second_moment(torch.randn(30, 6, generator=g, dtype=torch.float64))
    basis, _ = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))
    p = torch.eye(6, dtype=torch.float64) - basis @ basis.T
    lam = 0.5 * float(torch.trace(held)) / 6
    expected = (lam * w + w @ held @ p) @ torch.linalg.inv(lam * torch.eye(6, dtype=torch.float64) + p @ held @ p) @ p
    got = blind(w, basis, held, 0.5)
    assert torch.allclose(got, expected, atol=1e-10)
    assert got @ basis == pytest.approx(torch.zeros(5, 2, dtype=torch.float64), abs=1e-10)
    assert torch.allclose(blind(w, basis, None, 0.5), w @ p, atol=1e-12)


def test_no_embedding_restores_the_blinded_directions(sd1, uce_delta):
    """After UCE the closed-form embedding reproduces the base keys and values (error ~0); after the
    projection its error is at least the share of the base outputs that only the blinded directions give."""
    names = cross_attention_kv_names(sd1.unet)
    base = snapshot(sd1, names)
    d = base[names[0]].shape[1]
    rows = encode_prompts(sd1, list(CONCEPT.targets)).reshape(-1, d).double()
    config = ProjConfig(rank=4, preserve="concept", n_general=0, source="rows")
    hardened = harden(sd1, uce_delta, CONCEPT, config)
    assert hardened.manifest.config["chain"][-1] == {"method": "harden:proj"}
    base_w = [base[n] for n in names]
    apply_delta(sd1, uce_delta)
    erased = [snapshot(sd1, names)[n] for n in names]
    revert_delta(sd1, uce_delta)
    blinded = [hardened.tensors[n] for n in names]
    before = reproduction_error(erased, base_w, adversarial_embedding(erased, base_w, rows, 1e-6), rows)
    after = reproduction_error(blinded, base_w, adversarial_embedding(blinded, base_w, rows, 1e-6), rows)
    assert before < 1e-3
    assert after > 100 * before
    # every hardened K/V maps the blinded directions to zero
    ref = [w.double() for w in blinded]
    kernel = torch.linalg.svd(torch.cat(ref), full_matrices=True).Vh[-config.rank:].T  # common null space
    assert all(float((w @ kernel).abs().max()) < 1e-4 * float(w.abs().max()) for w in ref)
    assert hardened.manifest.metrics["rounds"][0]["blinded"] == 4


def test_the_refit_holds_the_held_rows_nearer_than_the_bare_projection(sd1, uce_delta):
    """On the held rows (preserved, concept, anchor) the refit's keys and values are nearer the erased
    model's than ``W' P``'s: the refit's least-squares problem has ``N = W'`` as a feasible point."""
    names = cross_attention_kv_names(sd1.unet)
    d = snapshot(sd1, names)[names[0]].shape[1]
    prompts = CONCEPT.preserve + list(CONCEPT.targets) + [CONCEPT.anchor] * 2
    held = encode_prompts(sd1, prompts).reshape(-1, d).double()
    apply_delta(sd1, uce_delta)
    erased = [snapshot(sd1, names)[n].double() for n in names]
    revert_delta(sd1, uce_delta)
    drift = {}
    for refit in (True, False):
        hardened = harden(sd1, uce_delta, CONCEPT, ProjConfig(rank=4, preserve="concept", n_general=0, refit=refit))
        drift[refit] = sum(float((held @ (hardened.tensors[n].double() - w).T).pow(2).sum())
                           for n, w in zip(names, erased))
    assert drift[True] < drift[False]


def test_erase_then_proj_in_one_command_writes_one_blinded_delta(tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli import app
    from erasekit.models.delta import WeightDelta

    out = tmp_path / "uce+proj"
    res = CliRunner().invoke(app, ["erase", "--method", "uce", "--concept", "circle", "--harden", "proj", "--out", str(out)])
    assert res.exit_code == 0, res.output
    composed = WeightDelta.load(out)
    assert composed.manifest.method == "uce+proj"
    assert composed.manifest.config["harden"]["n_templates"] == 8  # the Shapes preset
    rounds = composed.manifest.metrics["rounds"]
    assert rounds[0]["blinded"] == ProjConfig().rank and 0 < rounds[0]["concept_energy_blinded"] <= 1
    kv = [t.double() for n, t in composed.tensors.items() if n.endswith(("to_k.weight", "to_v.weight")) and "attn2" in n]
    stacked = torch.cat(kv)  # every layer's keys and values at once: they share the blinded null space
    assert stacked.shape[0] > stacked.shape[1]
    assert int(torch.linalg.matrix_rank(stacked, rtol=1e-5)) == stacked.shape[1] - ProjConfig().rank  # float32 storage
