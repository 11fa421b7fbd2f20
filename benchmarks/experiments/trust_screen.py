"""Screen TRuST settings cheaply: erase with each run of an experiment config, no image evaluation.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/experiments/trust_screen.py benchmarks/experiments/trust/red-screen.yaml

Takes the configs of ``run.py`` (concepts, runs with method, preset, overrides) and, for every
concept and run, erases and records what the run itself measured: the stopping rule's presence
checks (the Shapes detector's mean probability of the concept on its probe images, every
``stop_every`` iterations), where it stopped, neurons and entries changed, CPU seconds of the
erasure and the delta id.  The presence history is the screen: a setting whose presence does
not fall by the stopping ratio within the budget is not worth a full measurement
(``run.py`` on the same config, or a benchmark cell).  Results go to
``benchmarks/results/experiments/<topic>/<name>-screen.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from run import RESULTS, ExperimentError, load, write  # noqa: E402  (benchmarks/experiments is the script's folder)


def screen(doc: dict) -> list[dict]:
    import torch

    from erasekit.concepts.packs import get_concept
    from erasekit.methods.base import get_method
    from erasekit.models.loading import load_pipeline

    pipe = load_pipeline("shapes")
    rows = []
    for name in doc["concepts"]:
        spec = get_concept(name, world="shapes")
        for run in doc["runs"]:
            concept = spec if run.get("anchor") is None else spec.model_copy(update={"anchor": run["anchor"]})
            torch.manual_seed(0)
            wall, cpu = time.perf_counter(), time.process_time()
            delta = get_method(run["method"]).erase(pipe, concept, run["config"])
            m = delta.manifest.metrics
            rows.append({"label": run["label"], "concept": name, "cpu_seconds": time.process_time() - cpu,
                         "wall_seconds": time.perf_counter() - wall, "iterations": m.get("iterations"),
                         "stopped_at": m.get("stopped_at"), "presence_checks": m.get("presence_checks"),
                         "neurons_changed": m.get("neurons_changed"), "entries_changed": m.get("entries_changed"),
                         "delta_id": delta.delta_id})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(doc: dict, rows: list[dict]) -> str:
    lines = [doc.get("about", "").strip(), "", "Presence: the stopping rule's probe measurement, first -> last check "
             "(lowest / first).", "",
             "| run | concept | presence first -> last (min/first) | stopped at | neurons | entries | CPU s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        p = [v for _, v in r["presence_checks"] or []]
        pres = f"{p[0]:.2f} -> {p[-1]:.2f} ({min(p) / p[0]:.2f})" if p else "-"
        lines.append(f"| {r['label']} | {r['concept']} | {pres} | {r['stopped_at'] if r['stopped_at'] is not None else '-'} "
                     f"| {r['neurons_changed']} | {r['entries_changed']} | {r['cpu_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        docs = [(p, load(p)) for p in args.configs]
    except ExperimentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, doc in docs:
        out = write(path, doc, screen(doc), args.results, render=markdown, stem_suffix="-screen")
        print(f"wrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
