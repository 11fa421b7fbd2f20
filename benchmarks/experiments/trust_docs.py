"""Copy TRuST's generated result tables into docs/experiments/trust.md (between its markers).

    python benchmarks/experiments/trust_docs.py

Each marker pair ``<!-- trust-NAME:start -->`` / ``<!-- trust-NAME:end -->`` receives the markdown
file that a measurement script wrote (see ``SOURCES``); a missing file leaves its block as it is.
The ``robustness-seeds`` block renders the robustness benchmark's stored rows of TRuST, SalUn and
ESD on both seeds (``benchmarks/results/robustness-harden``), and the ``table`` block the benchmark
cells of TRuST, SalUn and SalUn++ (`trust_table.table`).  No computation: rerun the scripts
named in the page to refresh the files and rows.
"""

from __future__ import annotations

import re
from pathlib import Path

from erasekit.eval.atomic import write_text
from erasekit.eval.robustness_table import summary
from trust_table import table  # noqa: E402  (benchmarks/experiments is the script's folder)

ROOT = Path(__file__).resolve().parents[2]
TRUST_RESULTS = ROOT / "benchmarks" / "results" / "experiments" / "trust"
PAGE = ROOT / "docs" / "experiments" / "trust.md"
SOURCES = {
    "robustness": ROOT / "benchmarks" / "results" / "robustness-trust" / "summary.md",
    "steps": TRUST_RESULTS / "step-seconds.md",
    "steps-to-bar": TRUST_RESULTS / "steps-to-bar.md",
    "steps-to-bar-kv": TRUST_RESULTS / "steps-to-bar-kv-candidate.md",
    "steps-to-bar-ablation": TRUST_RESULTS / "steps-to-bar-ablation.md",
    "steps-to-bar-preset-ablation": TRUST_RESULTS / "steps-to-bar-preset-ablation.md",
    "steps-to-bar-xi": TRUST_RESULTS / "steps-to-bar-xi.md",
    "xi1-candidate": TRUST_RESULTS / "xi1-cip-candidate.md",
    "xi1-candidate-probes32": TRUST_RESULTS / "xi1-cip-candidate-probes32.md",
    "xi1-csr-candidate": TRUST_RESULTS / "xi1-csr-candidate-probes32.md",
    "paper-masks": TRUST_RESULTS / "paper-masks-lr1e-2-kv.md",
    "steps-to-bar-paper-masks": TRUST_RESULTS / "steps-to-bar-paper-masks.md",
    "paper-masks-nostop": TRUST_RESULTS / "paper-masks-lr1e-2-kv-nostop.md",
    "paper-masks-in-context": TRUST_RESULTS / "paper-masks-lr1e-2-kv-in-context.md",
    "screen": TRUST_RESULTS / "red-screen-screen.md",
    "candidate": TRUST_RESULTS / "fast-candidate.md",
    "candidate-8probes": TRUST_RESULTS / "fast-candidate-8probes.md",
    "candidate-retain": TRUST_RESULTS / "fast-candidate-retain.md",
    "candidate-kv": TRUST_RESULTS / "kv-retain-candidate.md",
    "cip-screen": TRUST_RESULTS / "red-cip-screen-screen.md",
    "red-contrast": TRUST_RESULTS / "red-contrast.md",
    "esd-screen": TRUST_RESULTS / "red-esd-screen-screen.md",
    "combination-neurons": TRUST_RESULTS / "combination-neurons.md",
    "combination-every2": TRUST_RESULTS / "steps-to-bar-comb-every2.md",
    "combination-every2-rpool32": TRUST_RESULTS / "steps-to-bar-comb-every2-rpool32.md",
    "combination-every2-b4": TRUST_RESULTS / "steps-to-bar-comb-every2-b4.md",
    "combination-every2-b4-g10": TRUST_RESULTS / "steps-to-bar-comb-every2-b4-g10-rpool32.md",
    "b4-g10-cells": TRUST_RESULTS / "b4-g10-rpool32-cells.md",
    "b4-g3-cells": TRUST_RESULTS / "b4-g3-rpool32-cells.md",
    "rb4-g10-cells": TRUST_RESULTS / "rb4-g10-rpool32-cells.md",
    "b2-g10-cells": TRUST_RESULTS / "b2-g10-rpool32-cells.md",
    "b4-g10-stop5-cells": TRUST_RESULTS / "b4-g10-rpool32-stop5-cells.md",
    "b4-g10-stop02-cells": TRUST_RESULTS / "b4-g10-rpool32-stop02-cells.md",
}


BENCHMARK_ROWS = ROOT / "benchmarks" / "results" / "robustness-harden"
COMPARED = {"trust", "trust-lr1e-3", "salun", "salun++", "esd-x", "esd-u"}


def fill(page: str, name: str, body: str) -> str:
    start, end = f"<!-- trust-{name}:start -->", f"<!-- trust-{name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(page):
        raise SystemExit(f"error: {PAGE} has no {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", page)


def main() -> None:
    page = PAGE.read_text(encoding="utf-8")
    for name, source in SOURCES.items():
        if source.exists():
            page = fill(page, name, source.read_text(encoding="utf-8"))
    page = fill(page, "table", table())
    page = fill(page, "robustness-seeds", summary(BENCHMARK_ROWS, COMPARED))
    write_text(PAGE, page)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
