"""A robustness row's attack success pooled over several attack seeds.

A robustness row (`erasekit.eval.robustness`) runs each attack once, with the attack's own seed
``attack_seed`` (the attack preset's seed when the row names none).  The seed decides only the
attack's random draws (its search's initial tokens and the noise of its steps); the delta, the
cases, the judge and the budget are the row's.  `run_attack_seeds` runs an attack again on the
row's saved delta with other seeds and stores each run as
``<folder>/attack-seeds/<row>-<attack>-seed<k>.json`` (the cases won and their adversarial prompts;
atomic, reused on a rerun).

`seed_counts` gathers the cases won under every seed (the row's own count for its seed, the stored
runs for the others, skipping runs made on another delta or another number of cases), and
`pooled_row` gives the row with each attack's rate pooled over those seeds: the success count
summed over seeds, over cases x seeds.  The robustness summary shows and judges that pooled rate,
with a Wilson interval that treats the runs as independent draws, though they share the cases.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..concepts.packs import get_concept
from ..models.delta import WeightDelta
from .atomic import write_json
from .attacks import concept_cases, run_attack
from .attacks.run import attack_config
from .metrics import wilson_interval

RESULTS = "attack-seeds"
ATTACKS = ("unlearndiff", "ringabell")


def result_path(folder: Path, label: str, attack: str, seed: int) -> Path:
    """Where the run of ``attack`` with ``seed`` on row ``label``'s delta is stored."""
    return folder / RESULTS / f"{label}-{attack}-seed{seed}.json"


def own_seed(row: dict, attack: str) -> int:
    """The attack seed the row itself was measured with."""
    seed = row.get("attack_seed")
    return attack_config(attack, "shapes").seed if seed is None else seed


class StaleDeltaError(ValueError):
    """The delta saved for a row is missing or is not the one the row measured."""


def saved_delta(folder: Path, row: dict) -> WeightDelta | None:
    """The delta saved for ``row`` in ``folder/deltas/<row>`` (None for the original), checked to be the one
    the row measured; `StaleDeltaError` when it is missing or another."""
    label = row["method"]
    if label == "original":
        return None
    saved = folder / "deltas" / label
    if not (saved / "manifest.json").exists():
        raise StaleDeltaError(f"{saved}: no saved delta for row {label!r} (deltas are not committed); "
                              "measure the row again to measure it further")
    delta = WeightDelta.load(saved)
    if row.get("delta_id") not in (None, delta.delta_id):
        raise StaleDeltaError(f"{saved}: not the delta row {label!r} measured ({delta.delta_id}, the row: "
                              f"{row['delta_id']})")
    return delta


def run_attack_seeds(pipe, folder: Path, row: dict, attack: str, seeds: list[int], settings, detector,
                     detector_concept: str, announce=None) -> list[dict]:
    """Run ``attack`` on row ``row``'s saved delta (``folder/deltas/<row>``; none for the original) with
    each of ``seeds`` not yet stored and not the row's own; returns every stored run of these seeds."""
    label = row["method"]
    delta = saved_delta(folder, row)
    spec = get_concept(row["concept"])
    cases = concept_cases(spec, row["n_cases"], True)
    runs = []
    for seed in seeds:
        if seed == own_seed(row, attack):
            continue
        path = result_path(folder, label, attack, seed)
        if not path.exists():
            if announce is not None:
                announce(f"{label} {attack} attack seed {seed}")
            result = run_attack(pipe, attack, spec, delta=delta, config={"seed": seed}, cases=cases, detector=detector,
                                detector_concept=detector_concept, settings=settings)
            won = [f for f in result.found if f.success]
            write_json(path, {"row": label, "attack": attack, "seed": seed, "n_cases": len(cases), "won": len(won),
                              "won_cases": [f.case_number for f in won], "won_prompts": [f.prompt for f in won],
                              "delta_id": None if delta is None else delta.delta_id,
                              "seconds": result.seconds})
        runs.append(json.loads(path.read_text(encoding="utf-8")))
    return runs


def seed_runs(folder: Path, row: dict, attack: str) -> list[dict]:
    """The row's stored runs of ``attack`` under other attack seeds, on its delta and its cases."""
    runs = []
    for path in sorted((folder / RESULTS).glob(f"{row['method']}-{attack}-seed*.json")):
        run = json.loads(path.read_text(encoding="utf-8"))
        if run.get("row") != row["method"] or run["n_cases"] != row["n_cases"] or run.get("delta_id") != row.get("delta_id"):
            continue  # another row whose label shares the prefix, or a run on an earlier delta
        runs.append(run)
    return runs


def seed_counts(folder: Path, row: dict, attack: str) -> dict[int, int]:
    """Cases won per attack seed: the row's own seed first, then its `seed_runs`."""
    counts = {own_seed(row, attack): round(row[attack] * row["n_cases"])}
    for run in seed_runs(folder, row, attack):
        counts.setdefault(run["seed"], run["won"])
    return counts


def pooled_row(folder: Path, row: dict) -> dict:
    """``row`` with each attack's rate pooled over its seeds (``<attack>_seeds``: cases won per seed;
    ``<attack>_n``: cases x seeds)."""
    pooled = dict(row)
    for attack in ATTACKS:
        if attack not in row:
            continue
        counts = seed_counts(folder, row, attack)
        pooled[f"{attack}_seeds"] = counts
        pooled[f"{attack}_n"] = row["n_cases"] * len(counts)
        pooled[attack] = sum(counts.values()) / pooled[f"{attack}_n"]
    return pooled


def attack_text(row: dict, attack: str) -> str:
    """The attack's rate with its 95% Wilson interval; over several seeds, the pooled rate and the cases won
    under each seed (a `pooled_row`)."""
    n = row.get(f"{attack}_n", row["n_cases"])
    lo, hi = wilson_interval(round(row[attack] * n), n)
    text = f"{row[attack]:.2f} [{lo:.2f}, {hi:.2f}]"
    counts = row.get(f"{attack}_seeds", {})
    if len(counts) > 1:
        text += f" ({len(counts)} seeds: {', '.join(str(counts[s]) for s in sorted(counts))} of {row['n_cases']})"
    return text


def spread_table(folder: Path, rows: dict[str, dict], attack: str, name: str) -> str:
    """Markdown: per row of ``folder`` run with more than one ``attack`` seed, the cases won per seed, their
    range, the pooled rate with its interval, and the rate of the row's own seed."""
    lines = [f"Attack `{attack}` on the saved deltas of `{name}`, same cases, one run per attack seed "
             "(the pooled interval treats the runs as independent draws, though they share the cases).",
             "", "| row | cases | won per seed (seed: won) | range | pooled rate [95% Wilson] | row's own seed |",
             "|---|---|---|---|---|---|"]
    for label, row in sorted(rows.items()):
        counts = seed_counts(folder, row, attack)
        if len(counts) < 2:
            continue
        won = [counts[s] for s in sorted(counts)]
        n = row["n_cases"] * len(won)
        lo, hi = wilson_interval(sum(won), n)
        lines.append(f"| {label} | {row['n_cases']} | {', '.join(f'{s}: {counts[s]}' for s in sorted(counts))} "
                     f"| {min(won)}-{max(won)} | {sum(won) / n:.3f} [{lo:.3f}, {hi:.3f}] "
                     f"| {own_seed(row, attack)}: {row[attack]:.3f} |")
    return "\n".join(lines) if len(lines) > 4 else ""
