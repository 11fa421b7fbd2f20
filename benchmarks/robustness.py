"""Robustness table: every erasure method under both prompt attacks and after resurgence.

    python benchmarks/robustness.py --concept circle            # all registered methods
    python benchmarks/robustness.py --concept circle --methods uce trce
    python benchmarks/robustness.py --concept circle --methods uce trce-t --harden rece   # + hardened rows

For the original model and each method's erasure of ``--concept`` (the method's
``shapes`` preset), on the same explicit target cases (prompts + seeds):

- ``plain``: target rate of the unattacked case prompts on the erased model;
- ``ringabell`` / ``unlearndiff``: success rate of the prompts each attack finds
  (attack presets for the Shapes world, see `erasekit.eval.attacks`);
- ``resurgence``: target rate (mean over the three wording tiers) after
  fine-tuning the erased model on benign renders of other concepts for
  ``--resurgence-steps`` steps (the delta on disk is never touched);
- ``tiers`` / ``preservation``: target rate per wording tier and the other values' adherence
  (both attributes read as named) relative to the original model's, on the probe prompts of
  `erasekit.eval.shapes_erasure` (``--tier-prompts`` per tier, ``--preservation-prompts``).

With ``--harden rece`` every method also gets a ``<method>+rece`` row: its delta hardened by
`erasekit.methods.harden` (Shapes preset).  RECE derives its adversarial embeddings in closed
form and never sees the attacks' prompts, so the attacks measuring it are independent of it.

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
from erasekit.eval.shapes_erasure import measure_erasure
from erasekit.generation import SamplingSettings
from erasekit.methods.base import get_method, list_methods
from erasekit.methods.harden import RECEConfig, harden
from erasekit.models.delta import WeightDelta, apply_delta, revert_delta
from erasekit.models.loading import load_pipeline, resolve_model_path

COLUMNS = ("plain", "ringabell", "unlearndiff", "resurgence")


def _plain_rate(pipe, delta, cases, detector, detector_concept, settings) -> float:
    found = [FoundPrompt(c.case_number, c.prompt, c.seed, [], c.prompt, None) for c in cases]
    with model_state(pipe, delta, erased=True):
        judge_prompts(pipe, found, detector, detector_concept, settings)
    return sum(bool(f.success) for f in found) / len(found)


def _tiers_and_preservation(pipe, delta, concept: str, settings, per_tier: int, n_preserve: int) -> dict:
    if delta is not None:
        apply_delta(pipe, delta)
    try:
        m = measure_erasure(pipe, concept, n_per_tier=per_tier, n_preserve=n_preserve, settings=settings)
    finally:
        if delta is not None:
            revert_delta(pipe, delta)
    return {"tiers": m["target_rate"], "adherence": m["preservation_adherence"]["both"]}


def measure(pipe, method: str | None, concept: str, n_cases: int, resurgence_steps: int, out: Path,
            settings: SamplingSettings, detector, detector_concept: str, hardening: str | None = None,
            per_tier: int = 32, n_preserve: int = 48) -> dict:
    spec = get_concept(concept)
    cases = concept_cases(spec, n_cases, True)
    label = method if hardening is None else f"{method}+{hardening}"
    row: dict = {"method": label or "original", "concept": concept, "n_cases": n_cases, "per_tier": per_tier,
                 "n_preserve": n_preserve}
    delta, delta_dir = None, None
    if method is not None:
        info = get_method(method)
        t0 = time.perf_counter()
        delta = info.erase(pipe, spec, info.config_cls.for_world("shapes"))
        row["erase_seconds"] = time.perf_counter() - t0
        if hardening == "rece":
            t0 = time.perf_counter()
            delta = harden(pipe, delta, spec, RECEConfig.for_world("shapes"))
            row["harden_seconds"] = time.perf_counter() - t0
            row["harden_rounds"] = len(delta.manifest.metrics["rounds"])
        delta_dir = out / "deltas" / label
        delta.save(delta_dir)
        delta = WeightDelta.load(delta_dir)
    row.update(_tiers_and_preservation(pipe, delta, concept, settings, per_tier, n_preserve))
    row["plain"] = _plain_rate(pipe, delta, cases, detector, detector_concept, settings)
    for attack in ("ringabell", "unlearndiff"):
        t0 = time.perf_counter()
        result = run_attack(pipe, attack, spec, delta=delta, cases=cases, detector=detector,
                            detector_concept=detector_concept, settings=settings, out=out / "attacks" / f"{row['method']}-{attack}")
        row[attack] = result.success_rate
        row[f"{attack}_seconds"] = time.perf_counter() - t0
    if delta is not None and resurgence_steps > 0:
        res = run_resurgence(pipe, delta, spec, {"steps": resurgence_steps, "save_delta": False},
                             detector=detector, detector_concept=detector_concept, settings=settings,
                             out=out / "resurgence" / method, delta_path=delta_dir)
        row["resurgence_before"] = res.mean_before
        row["resurgence"] = res.mean_after
        row["resurgence_steps"] = resurgence_steps
        row["resurgence_seconds"] = res.seconds
        row["delta_files_unchanged"] = res.delta_files_unchanged
    return row


def _preservation(row: dict, original: dict | None) -> str:
    if "adherence" not in row or original is None or "adherence" not in original:
        return "-"
    return f"{row['adherence'] / original['adherence']:.2f}"


def markdown(rows: list[dict], concept: str, n_cases: int, steps: int) -> str:
    original = next((r for r in rows if r["method"] == "original"), None)
    lines = [f"Target rate for `{concept}` on the Shapes model ({n_cases} explicit cases, fixed seeds): "
             f"plain prompts, prompts found by each attack, and after {steps} resurgence fine-tuning steps "
             "(mean over explicit/synonym/implicit tiers); tiers: explicit/synonym/implicit probe prompts; "
             "preservation: other values' adherence relative to the original model's.", "",
             "| method | tiers | preservation | plain | Ring-A-Bell | UnlearnDiffAtk | resurgence (before -> after) "
             "| erase s | harden s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = f"{r['resurgence_before']:.2f} -> {r['resurgence']:.2f}" if "resurgence" in r else "-"
        erase_s = f"{r['erase_seconds']:.1f}" if "erase_seconds" in r else "-"
        harden_s = f"{r['harden_seconds']:.1f}" if "harden_seconds" in r else "-"
        tiers = "/".join(f"{v:.2f}" for v in r["tiers"].values()) if "tiers" in r else "-"
        lines.append(f"| {r['method']} | {tiers} | {_preservation(r, original)} | {r['plain']:.2f} | {r['ringabell']:.2f} "
                     f"| {r['unlearndiff']:.2f} | {res} | {erase_s} | {harden_s} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--resurgence-steps", type=int, default=40, help="0: no resurgence column")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--harden", choices=["rece"], default=None, help="also measure each method hardened")
    ap.add_argument("--tier-prompts", type=int, default=32)
    ap.add_argument("--preservation-prompts", type=int, default=48)
    a = ap.parse_args()
    methods = a.methods or list_methods()
    out = a.out or Path("benchmarks/results/robustness") / a.concept
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    detector, detector_concept = default_detector(get_concept(a.concept), True)  # loaded once for all rows
    rows, console = [], Console()
    variants = [(None, None)] + [(m, None) for m in methods]
    if a.harden:
        variants += [(m, a.harden) for m in methods]
    for method, hardening in variants:
        label = method if hardening is None else f"{method}+{hardening}"
        path = out / f"{label or 'original'}.json"
        if path.exists() and "adherence" in (stored := json.loads(path.read_text())):
            rows.append(stored)
            continue
        console.print(f"[bold]{label or 'original'}[/bold] ...")
        row = measure(pipe, method, a.concept, a.cases, a.resurgence_steps, out, settings, detector, detector_concept,
                      hardening, a.tier_prompts, a.preservation_prompts)
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
