"""Compare evaluation folders: a summary per run and a Pareto plot of target rate vs preservation.

A run's target rate is its ASR over all target images (``metrics.asr.all``), or one
tier's when ``tier`` is given; lower is better.  Preservation: higher is better.
A run is on the Pareto front when no other run is at least as good on both and
better on one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from . import atomic
from .report import RESULTS


class ResultsError(ValueError):
    """A folder without a readable results.json; one line."""


@dataclass(frozen=True)
class RunSummary:
    label: str
    folder: str
    model: str
    method: str
    detector: str
    asr: dict[str, float]
    asr_original: dict[str, float] | None
    preservation: float | None

    def target_rate(self, tier: str | None = None) -> float | None:
        return self.asr.get(tier or "all")


def load_summary(folder: str | Path) -> RunSummary:
    folder = Path(folder)
    path = folder / RESULTS if folder.is_dir() else folder
    try:
        data = json.loads(path.read_text())
        m, s = data["metrics"], data["settings"]
    except (OSError, ValueError, KeyError) as err:
        raise ResultsError(f"{path}: not an erasekit results.json ({type(err).__name__}: {err})") from None
    delta = s.get("delta") or {}
    label = path.parent.name if path.name == RESULTS else path.stem
    return RunSummary(label=label, folder=str(path.parent), model=s.get("model", "?"),
                      method=delta.get("method") or "original", detector=s.get("detector", {}).get("name", "?"),
                      asr=m["asr"], asr_original=m.get("asr_original"), preservation=m.get("preservation"))


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (target rate, preservation) points: True where no other point dominates (lower rate, higher pres.)."""
    def dominates(a, b):
        return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])

    ok = [not any(math.isnan(v) for v in p) for p in points]
    return [ok[i] and not any(ok[j] and dominates(points[j], points[i]) for j in range(len(points)) if j != i)
            for i in range(len(points))]


def _points(runs: list[RunSummary], tier: str | None) -> list[tuple[float, float]]:
    nan = float("nan")
    return [(r.target_rate(tier) if r.target_rate(tier) is not None else nan,
             r.preservation if r.preservation is not None else nan) for r in runs]


def plot_front(labels: list[str], points: list[tuple[float, float]], path: str | Path, *, title: str, xlabel: str,
               ylabel: str, reference: tuple[str, float, float] | None = None, figsize=(6.4, 4.8),
               size: int = 45, title_size: float | None = None) -> Path:
    """The one Pareto plot: (target rate, preservation) points, front red and joined by a line; PNG.

    ``reference`` (label, x, y), e.g. the original model, is drawn as a black star.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=figsize, dpi=120)
    if reference is not None:
        ax.scatter([reference[1]], [reference[2]], marker="*", s=140, color="black", zorder=4)
        ax.annotate(reference[0], reference[1:], textcoords="offset points", xytext=(5, -10), fontsize=8)
    for label, (x, y), on_front in zip(labels, points, front):
        if any(math.isnan(v) or math.isinf(v) for v in (x, y)):
            continue
        ax.scatter([x], [y], s=size, color="tab:red" if on_front else "tab:gray", zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    fx = sorted((p for p, f in zip(points, front) if f), key=lambda p: p[0])
    if len(fx) > 1:
        ax.plot([p[0] for p in fx], [p[1] for p in fx], color="tab:red", lw=1, zorder=2)
    ax.set_xlim(-0.03, 1.03)  # rates are fractions
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return atomic.save_figure(path, fig)
    finally:
        plt.close(fig)


def plot_pareto(runs: list[RunSummary], path: str | Path, tier: str | None = None) -> Path:
    """Scatter of the runs' target rate (x, lower is better) vs preservation (y) (`plot_front`)."""
    return plot_front([f"{r.label} ({r.method})" for r in runs], _points(runs, tier), path, figsize=(6, 4.5), size=50,
                      title="erasekit: erasure vs preservation",
                      xlabel=f"target rate (ASR {tier or 'all tiers'}), lower is better",
                      ylabel="preservation (erased / original), higher is better")
