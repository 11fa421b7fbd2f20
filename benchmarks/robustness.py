"""Robustness table: every erasure method under both prompt attacks and after resurgence.

    python benchmarks/robustness.py --concept circle            # all registered methods
    python benchmarks/robustness.py --concept circle --methods uce trce

For the original model and each method's erasure of ``--concept`` (the method's
``shapes`` preset), on the same explicit target cases (prompts + seeds):

- ``plain``: target rate of the unattacked case prompts on the erased model;
- ``ringabell`` / ``unlearndiff``: success rate of the prompts each attack finds
  (attack presets for the Shapes world, see `erasekit.eval.attacks`);
- ``resurgence``: target rate (mean over the three wording tiers) after
  fine-tuning the erased model on benign renders of other concepts for
  ``--resurgence-steps`` steps (the delta on disk is never touched).

Each (method) row is written atomically to ``OUT/<method>.json`` as soon as it is
done and reused on a rerun (delete it to recompute); the table is printed and
written to ``OUT/robustness.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from erasekit.concepts.packs import get_concept
from erasekit.eval.atomic import write_json, write_text
from erasekit.eval.attacks import concept_cases, judge_prompts, model_state, run_attack, run_resurgence
from erasekit.eval.attacks.common import FoundPrompt
from erasekit.eval.attacks.runner import default_detector
from erasekit.generation import SamplingSettings
from erasekit.methods.base import get_method, list_methods
from erasekit.models.delta import WeightDelta
from erasekit.models.loading import load_pipeline, resolve_model_path

COLUMNS = ("plain", "ringabell", "unlearndiff", "resurgence")


def _plain_rate(pipe, delta, cases, detector, detector_concept, settings) -> float:
    found = [FoundPrompt(c.case_number, c.prompt, c.seed, [], c.prompt, None) for c in cases]
    with model_state(pipe, delta, erased=True):
        judge_prompts(pipe, found, detector, detector_concept, settings)
    return sum(bool(f.success) for f in found) / len(found)


def measure(pipe, method: str | None, concept: str, n_cases: int, resurgence_steps: int, out: Path,
            settings: SamplingSettings, detector, detector_concept: str) -> dict:
    spec = get_concept(concept)
    cases = concept_cases(spec, n_cases, True)
    row: dict = {"method": method or "original", "concept": concept, "n_cases": n_cases}
    delta, delta_dir = None, None
    if method is not None:
        info = get_method(method)
        t0 = time.perf_counter()
        delta = info.erase(pipe, spec, info.config_cls.for_world("shapes"))
        row["erase_seconds"] = time.perf_counter() - t0
        delta_dir = out / "deltas" / method
        delta.save(delta_dir)
        delta = WeightDelta.load(delta_dir)
    row["plain"] = _plain_rate(pipe, delta, cases, detector, detector_concept, settings)
    for attack in ("ringabell", "unlearndiff"):
        t0 = time.perf_counter()
        result = run_attack(pipe, attack, spec, delta=delta, cases=cases, detector=detector,
                            detector_concept=detector_concept, settings=settings, out=out / "attacks" / f"{row['method']}-{attack}")
        row[attack] = result.success_rate
        row[f"{attack}_seconds"] = time.perf_counter() - t0
    if delta is not None:
        res = run_resurgence(pipe, delta, spec, {"steps": resurgence_steps, "save_delta": False},
                             detector=detector, detector_concept=detector_concept, settings=settings,
                             out=out / "resurgence" / method, delta_path=delta_dir)
        row["resurgence_before"] = res.mean_before
        row["resurgence"] = res.mean_after
        row["resurgence_steps"] = resurgence_steps
        row["resurgence_seconds"] = res.seconds
        row["delta_files_unchanged"] = res.delta_files_unchanged
    return row


def markdown(rows: list[dict], concept: str, n_cases: int, steps: int) -> str:
    lines = [f"Target rate for `{concept}` on the Shapes model ({n_cases} explicit cases, fixed seeds): "
             f"plain prompts, prompts found by each attack, and after {steps} resurgence fine-tuning steps "
             "(mean over explicit/synonym/implicit tiers).", "",
             "| method | plain | Ring-A-Bell | UnlearnDiffAtk | resurgence (before -> after) | erase s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        res = f"{r['resurgence_before']:.2f} -> {r['resurgence']:.2f}" if "resurgence" in r else "-"
        erase_s = f"{r['erase_seconds']:.1f}" if "erase_seconds" in r else "-"
        lines.append(f"| {r['method']} | {r['plain']:.2f} | {r['ringabell']:.2f} | {r['unlearndiff']:.2f} | {res} | {erase_s} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--resurgence-steps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    methods = a.methods or list_methods()
    out = a.out or Path("benchmarks/results/robustness") / a.concept
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    detector, detector_concept = default_detector(get_concept(a.concept), True)  # loaded once for all rows
    rows, console = [], Console()
    for method in [None, *methods]:
        path = out / f"{method or 'original'}.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
            continue
        console.print(f"[bold]{method or 'original'}[/bold] ...")
        row = measure(pipe, method, a.concept, a.cases, a.resurgence_steps, out, settings, detector, detector_concept)
        write_json(path, row)
        rows.append(row)
    table = Table(title=f"robustness: {a.concept}")
    for c in ("method", *COLUMNS, "erase s"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["method"], *(f"{r[c]:.2f}" if c in r else "-" for c in COLUMNS),
                      f"{r['erase_seconds']:.1f}" if "erase_seconds" in r else "-")
    console.print(table)
    write_text(out / "robustness.md", markdown(rows, a.concept, a.cases, a.resurgence_steps))


if __name__ == "__main__":
    main()
