"""Projection hardening: the directions solve their eigenproblem, the edit equals its equation, and no
embedding reaches the concept through the blinded directions, unlike after a closed-form edit."""

import numpy as np
import pytest
import torch

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.base import get_method
from erasekit.methods.closed_form import cross_attention_kv_names, second_moment
from erasekit.methods.harden import ProjConfig, adversarial_embedding, harden, reproduction_error
from erasekit.methods.harden.proj import blind, concept_directions
from erasekit.models.delta import apply_delta, revert_delta, snapshot
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
