"""Metrics: ASR per tier, preservation, Frechet distance (scipy sqrtm), CLIP score, FID plumbing, Pareto."""

import numpy as np
import pytest
import torch
from PIL import Image

from erasekit.eval import metrics as M
from erasekit.eval.compare import RunSummary, pareto_front, plot_pareto
from erasekit.eval.fid import InceptionUnavailableError, fid, load_inception


def test_attack_success_rate_per_tier():
    asr = M.attack_success_rate([True, False, True, True, False, False], ["a", "a", "b", "b", "c", "c"])
    assert asr == {"a": 0.5, "b": 1.0, "c": 0.0, "all": 0.5}
    with pytest.raises(ValueError):
        M.attack_success_rate([True], ["a", "b"])


def test_preservation_ratio():
    assert M.preservation(0.45, 0.9) == pytest.approx(0.5)
    assert M.preservation(0.9, 0.9) == 1.0


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (4000, 3))
    b = rng.normal(1.0, 2.0, (4000, 3))
    mu_a, mu_b = a.mean(0), b.mean(0)
    va, vb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # near-diagonal sample covariances: compare with the diagonal formula loosely, the exact one tightly
    expected_diag = ((mu_a - mu_b) ** 2).sum() + sum(va[i, i] + vb[i, i] - 2 * np.sqrt(va[i, i] * vb[i, i]) for i in range(3))
    got = M.frechet_distance(a, b)
    assert got == pytest.approx(expected_diag, rel=0.02)
    assert got == pytest.approx(3 * (1 + 1), rel=0.1)  # true value: 3 x (mean gap 1 + (2 - 1)^2)
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_with_singular_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(8, 32)), rng.normal(size=(8, 32)) + 0.5  # fewer samples than dimensions
    d = M.frechet_distance(a, b)
    assert np.isfinite(d) and d > 0


def test_shapes_adherence():
    from erasekit.eval.scoring import adherence

    read = [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "red"}, {"shape": "star", "color": "blue"}]
    expected = [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}, {"shape": "heart", "color": "blue"}]
    got = adherence(read, expected, ("shape", "color"))
    assert got == pytest.approx({"shape": 2 / 3, "color": 2 / 3, "checked": 1 / 3})
    assert adherence(read, expected, ("color",))["checked"] == pytest.approx(2 / 3)


class _FakeInception(torch.nn.Module):
    """Stands in for the TorchScript Inception: same call signature, 6 colour-statistic features."""

    def forward(self, x: torch.Tensor, return_features: bool = True) -> torch.Tensor:
        x = x / 255.0
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _images(seed, n=12, shift=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(np.clip(rng.integers(0, 200, (16, 16, 3)) + shift, 0, 255).astype(np.uint8)) for _ in range(n)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fid_reads_a_local_torchscript_inception(tmp_path, monkeypatch):
    path = tmp_path / "inception.pt"
    torch.jit.script(_FakeInception()).save(str(path))
    model = load_inception(path)
    a = _images(0)
    assert fid(a, a, model) == pytest.approx(0.0, abs=1e-6)
    assert fid(a, _images(1, shift=40), model) > fid(a, _images(2), model)
    monkeypatch.delenv("ERASEKIT_INCEPTION", raising=False)
    with pytest.raises(InceptionUnavailableError, match="not available offline") as info:
        load_inception(None)
    assert "\n" not in str(info.value)
    with pytest.raises(InceptionUnavailableError, match="not found"):
        load_inception(tmp_path / "missing.pt")


def test_pareto_front_and_plot(tmp_path):
    points = [(0.9, 1.0), (0.1, 0.8), (0.2, 0.7), (0.05, 0.5), (float("nan"), 0.9)]
    assert pareto_front(points) == [True, True, False, True, False]
    runs = [RunSummary(f"run{i}", "", "shapes", "m", "shapes", {"all": x}, None, y) for i, (x, y) in enumerate(points)]
    out = plot_pareto(runs, tmp_path / "p.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 100
