"""Seconds per step of TRuST, SalUn and SalUn++ side by side, split into the parts of a step.

    python benchmarks/experiments/trust_step_seconds.py --scenario object --iterations 20
    python benchmarks/experiments/trust_step_seconds.py --method trust 'trust{"mask_every": 5}' salun --iterations 20

Each method erases the scenario's concept with its ``shapes`` preset (config seed 0), with the
iteration budget cut to ``--iterations``, ``--set field=value`` overrides (for every method whose
config has the field) and a method's own overrides as JSON after its name (``trust{"lr": 0.01}``).
CPU seconds of this process (run it with ``OMP_NUM_THREADS=1``; wall-clock on a shared machine
includes waiting) are split into:

- ``setup``: from the start of the erasure to the first step (prompt encoding, latent pools, the
  static mask, the stopping rule's probe noise);
- ``presence``: the stopping rule's presence checks (probe generations + detector);
- ``mask``: mask re-estimation (saliency sample, its gradient, thresholding);
- ``loss``: the rest of the step function's forward (reference and edited predictions, CSR's
  first-order gradient with its graph, the retain term);
- ``backward+opt``: the trainer's backward (with CSR the Hessian-vector product) and the masked
  Adam step.

Per-step columns divide by the steps run.  The table goes to stdout and, with ``--out``, to a
markdown file with the raw numbers beside it as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from run import overrides_of  # noqa: E402  (benchmarks/experiments is the script's folder)

import torch

from erasekit.eval.bench.erasing import method_run
from erasekit.eval.tasks import get_task
from erasekit.methods.base import get_method
from erasekit.methods.trust import step as step_module
from erasekit.methods.trust import stopping
from erasekit.models.loading import load_pipeline

PARTS = ("presence", "mask", "loss", "backward+opt")


class Clock:
    """CPU seconds by part, collected by wrapping the step's functions."""

    def __init__(self):
        self.parts = dict.fromkeys(("setup", *PARTS), 0.0)
        self.steps = 0
        self.t0 = self.last = None  # start of the erasure, end of the previous step function call
        self.inner = 0.0  # presence + mask seconds inside the current step call

    def wrap(self, owner, name: str, part: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                dt = time.process_time() - t
                self.parts[part] += dt
                self.inner += dt

        setattr(owner, name, timed)
        return original

    def wrap_step(self):
        original = step_module.TrustStep.__call__

        def call(step_fn, step, g):
            t = time.process_time()
            if self.last is None:
                self.parts["setup"] += t - self.t0
            else:
                self.parts["backward+opt"] += t - self.last
            self.inner = 0.0
            out = original(step_fn, step, g)
            self.last = time.process_time()
            self.parts["loss"] += self.last - t - self.inner
            self.steps += 1
            return out

        step_module.TrustStep.__call__ = call
        return original


def measure(pipe, method: str, scenario: str, iterations: int, overrides: dict) -> dict:
    concept = get_task(scenario).specs()[0]
    spec = get_method(method)
    fields = spec.config_cls.model_fields
    run = method_run(method, concept, "shapes", {method: {"iterations": iterations,
                                                          **{k: v for k, v in overrides.items() if k in fields}}})
    clock = Clock()
    saved = [(step_module.TrustStep, "recompute_masks", clock.wrap(step_module.TrustStep, "recompute_masks", "mask")),
             (stopping.StopRule, "presence", clock.wrap(stopping.StopRule, "presence", "presence")),
             (step_module.TrustStep, "__call__", clock.wrap_step())]
    torch.manual_seed(0)
    try:
        wall, clock.t0 = time.perf_counter(), time.process_time()
        delta = spec.erase(pipe, concept, run.config)
        end = time.process_time()
        wall = time.perf_counter() - wall
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    if clock.last is not None:
        clock.parts["backward+opt"] += end - clock.last  # the last step's backward, and the delta's assembly
    m = delta.manifest.metrics
    return {"method": method, "scenario": scenario, "steps": clock.steps, "trained": m.get("iterations", clock.steps),
            "cpu_seconds": end - clock.t0, "wall_seconds": wall, **clock.parts, "delta_id": delta.delta_id,
            "overrides": {k: v for k, v in overrides.items() if k in fields}}


def table(rows: list[dict]) -> str:
    head = ("| method | scenario | steps | setup s | " + " | ".join(f"{p} s/step" for p in PARTS)
            + " | step s (all parts) | CPU s total | wall s | overrides |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        n = max(1, r["steps"])
        per = [r[p] / n for p in PARTS]
        lines.append(f"| {r['method']} | {r['scenario']} | {r['steps']} | {r['setup']:.2f} | "
                     + " | ".join(f"{x:.3f}" for x in per)
                     + f" | {sum(per):.3f} | {r['cpu_seconds']:.1f} | {r['wall_seconds']:.1f} | "
                     + (", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-") + " |")
    return "\n".join(lines) + "\n"



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="object")
    ap.add_argument("--method", nargs="+", default=["trust", "salun", "salun++"])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="config override (JSON value) for the methods that have the field")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.json")
    a = ap.parse_args()
    overrides = overrides_of(ap, a.set)
    pipe = load_pipeline("shapes")
    rows = []
    for entry in a.method:
        name, brace, own = entry.partition("{")
        rows.append(measure(pipe, name, a.scenario, a.iterations, {**overrides, **(json.loads(brace + own) if brace else {})}))
    text = table(rows)
    print(text)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        for suffix, body in ((".md", text), (".json", json.dumps(rows, indent=1))):
            tmp = a.out.with_suffix(suffix + ".tmp")
            tmp.write_text(body, encoding="utf-8")
            tmp.replace(a.out.with_suffix(suffix))


if __name__ == "__main__":
    main()
