"""Add per-attribute preservation (shape, colour) to stored robustness rows that record only both.

    python benchmarks/backfill_adherence.py benchmarks/results/robustness-harden/circle/cases48 [...]

Rows measured before `erasekit.eval.robustness` stored ``adherence_by_attribute`` hold only the
adherence of both attributes together.  For each such row whose delta is still saved under
``FOLDER/deltas/<row>`` with the row's delta id (the original row needs none), the preservation
probes are drawn again with the row's prompt count and read; the row gains the per-attribute
adherence only when the re-measured both-attribute adherence equals the stored one (the same
images), and is left as it was otherwise.  Rows are rewritten atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from erasekit.eval.atomic import write_json  # noqa: E402
from erasekit.eval.measure import measure_erasure  # noqa: E402
from erasekit.generation import SamplingSettings  # noqa: E402
from erasekit.models.delta import WeightDelta, apply_delta, revert_delta  # noqa: E402
from erasekit.models.loading import load_pipeline, resolve_model_path  # noqa: E402


def backfill(pipe, settings, path: Path) -> str:
    row = json.loads(path.read_text())
    if "adherence" not in row or "adherence_by_attribute" in row:
        return "skipped (nothing to add)"
    delta = None
    if row["method"] != "original":
        folder = path.parent / "deltas" / row["method"]
        if not (folder / "manifest.json").exists():
            return "skipped (delta not saved)"
        delta = WeightDelta.load(folder)
        if delta.delta_id != row.get("delta_id"):
            return f"skipped (saved delta {delta.delta_id} is not the row's {row.get('delta_id')})"
        apply_delta(pipe, delta)
    try:
        m = measure_erasure(pipe, row["concept"], n_per_tier=1, n_preserve=row.get("n_preserve", 48), settings=settings)
    finally:
        if delta is not None:
            revert_delta(pipe, delta)
    kept = m["preservation_adherence"]
    if abs(kept["both"] - row["adherence"]) > 1e-9:
        return f"skipped (re-measured both {kept['both']:.4f} != stored {row['adherence']:.4f})"
    row["adherence_by_attribute"] = {"shape": kept["shape"], "color": kept["color"]}
    write_json(path, row)
    return f"added shape {kept['shape']:.3f}, color {kept['color']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path)
    a = ap.parse_args()
    pipe = load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    for folder in a.folders:
        for path in sorted(folder.glob("*.json")):
            print(f"{path}: {backfill(pipe, settings, path)}", flush=True)


if __name__ == "__main__":
    main()
