"""Measure one method setting (TRuST's by default) on benchmark scenarios, with fewer probes than a cell by default.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/experiments/trust_scenarios.py \
        --scenario attribute combination style object --set lr=0.01 --set mask_every=5 --name fast-candidate

For each scenario: erase with ``--method``'s ``shapes`` preset and the ``--set`` overrides (config
seed ``--seed``), then measure the scenario's probes (`erasekit.eval.measure.measure_task`)
with ``--per-tier`` prompts per wording tier and ``--preserve`` preservation prompts.  The original
model is not re-measured: the fall and preservation are taken against the scenario's original
benchmark cell (32 prompts per tier, 48 preservation prompts), so they carry that cell's sampling
noise as well.  Each row is appended to ``benchmarks/results/experiments/trust/<name>.jsonl`` as soon
as it is done (``--topic`` names another folder than ``trust``), and ``<name>.md`` is rewritten with every
row so far.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from run import jsonl_rows, overrides_of  # noqa: E402  (benchmarks/experiments is the script's folder)
from trust_table import meets  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
CELLS = RESULTS / "bench" / "cells"



def markdown(rows: list[dict]) -> str:
    lines = ["Target rate: mean of the three wording tiers; fall and preservation against the original benchmark "
             "cell; bars: fall >= 5x and preservation >= 0.9.", "",
             "| scenario | method | seed | overrides | target rate | fall (x) | preservation | bars | steps | neurons "
             "| erase CPU s | prompts per tier / preservation |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fall = r["original_rate"] / r["target_rate"] if r["target_rate"] > 0 else float("inf")
        ok = meets(r["target_rate"], r["original_rate"], r["preservation"])
        lines.append(f"| {r['scenario']} | {r['method']} | {r['seed']} | "
                     + (", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-")
                     + f" | {r['target_rate']:.2f} | {fall:.1f} | {r['preservation']:.2f} | {'yes' if ok else 'no'} "
                     f"| {r['steps'] if r['steps'] is not None else '–'} | "
                     f"{r['neurons_changed'] if r['neurons_changed'] is not None else '–'} | {r['cpu_seconds']:.1f} "
                     f"| {r['per_tier']} / {r['preserve']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", nargs="+", required=True)
    ap.add_argument("--method", default="trust")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-tier", type=int, default=8)
    ap.add_argument("--preserve", type=int, default=16)
    ap.add_argument("--name", required=True, help="results file stem")
    ap.add_argument("--topic", default="trust", help="folder under benchmarks/results/experiments")
    a = ap.parse_args()
    overrides = overrides_of(ap, a.set)

    import torch

    from erasekit.eval.bench.erasing import method_run
    from erasekit.eval.measure import measure_task
    from erasekit.eval.tasks import get_task
    from erasekit.world.atomic import write_text
    from erasekit.eval.detectors.shapes import ShapesConceptDetector
    from erasekit.generation import SamplingSettings
    from erasekit.methods.base import get_method
    from erasekit.models.delta import apply_delta, revert_delta
    from erasekit.models.loading import load_pipeline, resolve_model_path

    pipe = load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    reader = ShapesConceptDetector()
    out = RESULTS / "experiments" / a.topic
    jsonl, md = out / f"{a.name}.jsonl", out / f"{a.name}.md"
    out.mkdir(parents=True, exist_ok=True)
    for key in a.scenario:
        scenario = get_task(key)
        original = json.loads((CELLS / key / "original.json").read_text())
        concept = scenario.specs()[0]
        run = method_run(a.method, concept, "shapes", {a.method: {"seed": a.seed, **overrides}})
        torch.manual_seed(a.seed)
        cpu = time.process_time()
        delta = get_method(a.method).erase(pipe, concept, run.config)
        cpu = time.process_time() - cpu
        apply_delta(pipe, delta)
        try:
            numbers, _ = measure_task(pipe, scenario, a.per_tier, a.preserve, settings, reader, features=False)
        finally:
            revert_delta(pipe, delta)
        m = delta.manifest.metrics
        row = {"scenario": key, "method": a.method, "seed": a.seed, "overrides": overrides,
               "target_rate": numbers["target_rate_mean"], "original_rate": original["target_rate_mean"],
               "preservation": numbers["preservation_adherence"]["checked"]
               / original["preservation_adherence"]["checked"],
               "numbers": numbers, "steps": m.get("iterations"), "neurons_changed": m.get("neurons_changed"),
               "entries_changed": m.get("entries_changed"), "cpu_seconds": cpu, "delta_id": delta.delta_id,
               "per_tier": a.per_tier, "preserve": a.preserve}
        with jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        write_text(md, markdown(jsonl_rows(jsonl)))  # re-read: another run may share the file
        print(markdown([row]).splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
