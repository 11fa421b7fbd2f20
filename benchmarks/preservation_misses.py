"""Which preservation prompts an erasure gets wrong: the prompts behind a preservation number.

    python benchmarks/preservation_misses.py --concept red \\
        kscu=benchmarks/results/robustness-harden/red/deltas/kscu \\
        kscu+adv=benchmarks/results/robustness-harden/red/deltas/kscu+adv

For the original model and each ``NAME=DELTA_FOLDER`` (or ``NAME=method:METHOD``: that method's
Shapes-preset erasure, made here), the preservation probes of ``--concept`` (the prompts and seeds of
`erasekit.eval.measure.measure_erasure`) are drawn and read by the Shapes detector.  Printed: a
markdown table of every prompt that some model draws other than named (shape/colour read, a star
where it differs from the prompt), then each model's count of prompts drawn as named.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from erasekit.concepts.packs import get_concept  # noqa: E402
from erasekit.eval.measure import preservation_readings  # noqa: E402
from erasekit.eval.robustness import quiet  # noqa: E402
from erasekit.methods.base import get_method  # noqa: E402
from erasekit.models.delta import WeightDelta, apply_delta, revert_delta  # noqa: E402
from erasekit.models.loading import load_pipeline  # noqa: E402


def _delta(pipe, concept: str, source: str) -> WeightDelta:
    if source.startswith("method:"):
        info = get_method(source.removeprefix("method:"))
        return info.erase(pipe, get_concept(concept), info.config_cls.for_world("shapes", **quiet(info.config_cls)))
    return WeightDelta.load(source)


def misses_table(pipe, concept: str, models: dict[str, str], n_preserve: int) -> str:
    columns = {"original": preservation_readings(pipe, concept, n_preserve)}
    for name, source in models.items():
        delta = _delta(pipe, concept, source)
        apply_delta(pipe, delta)
        try:
            columns[name] = preservation_readings(pipe, concept, n_preserve)
        finally:
            revert_delta(pipe, delta)
    names = list(columns)
    probes = [p for p, _ in columns["original"]]

    def cell(probe, read) -> str:
        shown = "/".join(read[a] for a in ("shape", "color"))
        return shown + (" *" if any(read[a] != v for a, v in probe.expected.items()) else "")

    lines = ["| prompt | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k, probe in enumerate(probes):
        cells = [cell(probe, columns[n][k][1]) for n in names]
        if any(c.endswith("*") for c in cells):
            lines.append(f"| {probe.prompt} | " + " | ".join(cells) + " |")
    counts = [sum(all(r[a] == v for a, v in p.expected.items()) for p, r in columns[n]) for n in names]
    lines.append("| **drawn as named** | " + " | ".join(f"{c} / {len(probes)}" for c in counts) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concept", required=True, help="a Shapes value, e.g. red or circle")
    ap.add_argument("models", nargs="+", metavar="NAME=DELTA", help="a saved delta folder or method:METHOD")
    ap.add_argument("--preservation-prompts", type=int, default=48)
    args = ap.parse_args()
    models = {}
    for item in args.models:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            sys.exit(f"error: {item!r} is not NAME=DELTA_FOLDER or NAME=method:METHOD")
        models[name] = source
    print(misses_table(load_pipeline("shapes"), args.concept, models, args.preservation_prompts))


if __name__ == "__main__":
    main()
