"""Print TRuST against SalUn and SalUn++ from the Shapes benchmark cells (no computation).

For every scenario and config seed: the target rate (mean of the three wording tiers) and its
fall from the original model, preservation, whether the 5x fall / 0.9 preservation bars hold,
erasure wall-clock seconds and the CPU seconds of the method's process (the machine is shared, so
wall-clock time includes waiting for the CPU), optimiser steps, neurons changed (output rows of the scope with any
changed entry), entries changed (the union of everything that moved) and the share of those
entries that holds 90% of the squared change.  A "–" marks a number the cell does not record (cells measured before the
method recorded it).  Cells come from
``erasekit bench --scenario S --method M --seed 1`` (benchmarks/results/bench/cells).

    python benchmarks/experiments/trust_table.py [--cells DIR] [--methods trust salun salun++]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from erasekit.eval.bench.markdown import falls_enough

SCENARIOS = ("object", "style", "attribute", "combination", "conditional")
CELLS = Path(__file__).resolve().parents[1] / "results" / "bench" / "cells"
# change-only runs (trust_changes.py) for cells measured before the methods recorded these metrics
CHANGES = Path(__file__).resolve().parents[1] / "results" / "trust-changes"


FALL, KEPT = 5.0, 0.9  # the bars: the target rate falls FALL-fold, preservation stays >= KEPT


def meets(rate: float, original: float, preservation: float) -> bool:
    """Both bars, the fall read as the benchmark reads it (`falls_enough`: an exact fivefold fall counts)."""
    return falls_enough(rate, original, FALL) and preservation >= KEPT


def cell_name(method: str, seed: int) -> str:
    """The file name the benchmark gives ``method``'s cell at config seed ``seed``."""
    return f"{method}.json" if seed == 0 else f"{method}@seed{seed}.json"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(x, spec: str = "") -> str:
    return "–" if x is None else format(x, spec)


def rows(cells: Path, methods: list[str], seeds: list[int]) -> list[list[str]]:
    out = []
    for scen in SCENARIOS:
        original = _load(cells / scen / "original.json")
        base = original["target_rate_mean"] if original else None
        for method in methods:
            for seed in seeds:
                cell = _load(cells / scen / cell_name(method, seed))
                if cell is None or (method == "trust" and "mask_unit" not in cell["configs"][0]):
                    continue  # missing, or a cell of the entry-mask TRuST that preceded the neuron masks
                rate, keep = cell["target_rate_mean"], cell["preservation"]
                fall = (base / rate if rate > 0 else float("inf")) if base is not None else None
                ok = base is not None and meets(rate, base, keep)
                mm = (cell.get("method_metrics") or [{}])[0]
                extra = _load(CHANGES / scen / cell_name(method, seed)) if not mm else None
                mark = ""
                if extra is not None:
                    mm = extra["method_metrics"]  # the same config erased again without evaluation
                    mark = "" if extra["delta_id"] in cell.get("delta_ids", []) else "*"
                entries, e90 = mm.get("entries_changed"), mm.get("entries_90")
                share = e90 / entries if entries else None
                out.append([scen, method, str(seed), _fmt(rate, ".2f"), _fmt(fall, ".1f"), _fmt(keep, ".2f"),
                            "yes" if ok else "no", _fmt(cell["erase_seconds"], ".1f"), _fmt(mm.get("cpu_seconds"), ".1f") + mark,
                            str(cell["iterations"]),
                            _fmt(mm.get("neurons_changed")) + mark, _fmt(entries) + mark, _fmt(share, ".1%") + mark,
                            _fmt(mm.get("mask_jaccard_mean"), ".2f")])
    return out


HEAD = ["scenario", "method", "seed", "target rate", "fall (x)", "preservation", "bars", "erase s", "CPU s", "steps",
        "neurons changed", "entries changed", "share holding 90% of sq. change", "mask Jaccard"]
NOTE = ("*: from a change-only rerun of the same config (trust_changes.py, one thread); the cell's delta was "
        "made on two threads, so its floats, and these counts, can differ slightly.")


def table(cells: Path = CELLS, methods: tuple[str, ...] = ("trust", "salun", "salun++"),
          seeds: tuple[int, ...] = (0, 1)) -> str:
    """The markdown table of the cells, with its footnote."""
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(cells, list(methods), list(seeds))]
    return "\n".join(lines) + "\n\n" + NOTE + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=Path, default=CELLS)
    ap.add_argument("--methods", nargs="+", default=["trust", "salun", "salun++"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = ap.parse_args()
    print(table(args.cells, tuple(args.methods), tuple(args.seeds)), end="")


if __name__ == "__main__":
    main()
