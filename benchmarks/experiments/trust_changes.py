"""Erase one Shapes scenario with one method (its ``shapes`` preset, config seed ``--seed``) and keep only the change.

Writes the method's scalar metrics (neurons and entries changed, the entries holding 90% of the
squared change, steps, CPU seconds) to ``OUT/<scenario>/<method>.json`` (``<method>@seed<N>.json``
for a seed other than 0, as the benchmark names its cells) without evaluating images: the
supplement `trust_table.py` reads for benchmark cells that predate these metrics.

    python benchmarks/experiments/trust_changes.py --scenario style --method salun [--seed 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from erasekit.eval.atomic import write_json
from erasekit.eval.bench.erasing import method_run
from erasekit.eval.tasks import get_task as get_scenario
from erasekit.methods.base import get_method
from erasekit.models.loading import load_pipeline
from trust_table import cell_name  # noqa: E402  (benchmarks/experiments is the script's folder)

OUT = Path(__file__).resolve().parents[1] / "results" / "trust-changes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--method", required=True)
    ap.add_argument("--seed", type=int, default=0, help="config seed (the benchmark's --seed)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    pipe = load_pipeline("shapes")
    concept = get_scenario(args.scenario).specs()[0]
    run = method_run(args.method, concept, "shapes", {args.method: {"seed": args.seed}} if args.seed else {})
    torch.manual_seed(getattr(run.config, "seed", 0))
    t = time.perf_counter()
    delta = get_method(args.method).erase(pipe, concept, run.config)
    metrics = {k: v for k, v in delta.manifest.metrics.items() if v is None or isinstance(v, (int, float, str))}
    path = args.out / args.scenario / cell_name(args.method, args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"scenario": args.scenario, "method": args.method, "delta_id": delta.delta_id,
                      "erase_seconds": time.perf_counter() - t, "method_metrics": metrics})
    print(path)


if __name__ == "__main__":
    main()
