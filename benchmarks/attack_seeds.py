"""How much a robustness row's attack success rate moves with the attack's own seed, on the same delta.

    python benchmarks/attack_seeds.py benchmarks/results/robustness-harden/red/cases48 --rows trce trce+rece \
        --seeds 0 1 2 3
    python benchmarks/attack_seeds.py benchmarks/results/robustness-harden/red/cases48 --table   # print only

For each row label (its delta saved by `benchmarks/robustness.py` under ``FOLDER/deltas/<row>``; the
row's own JSON gives the concept and the number of cases), the UnlearnDiffAtk-style attack (or
``--attack ringabell``) runs again on the same explicit cases with each ``--seeds`` value as the
attack's seed (the robustness rows use seed 0 unless they name an ``attack_seed``).  Only the
attack's random draws change: the delta, the cases, the judge and the budget are the row's.

Each result is written atomically to ``FOLDER/attack-seeds/<row>-<attack>-seed<k>.json`` as soon as
it is done and reused on a rerun.  The table gives, per row, the cases won under each seed, their
range, and the pooled rate over all seeds with its 95% Wilson interval (pooling treats each
seed's draw as another sample of the attack on the same cases), and the row's stored rate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = "attack-seeds"


def result_path(folder: Path, row: str, attack: str, seed: int) -> Path:
    return folder / RESULTS / f"{row}-{attack}-seed{seed}.json"


def run(folder: Path, rows: list[str], attack: str, seeds: list[int]) -> None:
    from erasekit.concepts.packs import get_concept
    from erasekit.eval.atomic import write_text
    from erasekit.eval.attacks import concept_cases
    from erasekit.eval.attacks.run import default_detector, run_attack
    from erasekit.generation import SamplingSettings
    from erasekit.models.delta import WeightDelta
    from erasekit.models.loading import load_pipeline, resolve_model_path

    pipe = load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    for row in rows:
        stored = json.loads((folder / f"{row}.json").read_text(encoding="utf-8"))
        spec = get_concept(stored["concept"])
        detector, detector_concept = default_detector(spec, True)
        cases = concept_cases(spec, stored["n_cases"], True)
        delta = WeightDelta.load(folder / "deltas" / row) if row != "original" else None
        if delta is not None and stored.get("delta_id") not in (None, delta.delta_id):
            raise SystemExit(f"{row}: the saved delta is not the one the row measured")
        for seed in seeds:
            path = result_path(folder, row, attack, seed)
            if path.exists():
                continue
            print(f"{row} {attack} seed {seed} ...", flush=True)
            result = run_attack(pipe, attack, spec, delta=delta, config={"seed": seed}, cases=cases,
                                detector=detector, detector_concept=detector_concept, settings=settings)
            won_cases = [f.case_number for f in result.found if f.success]
            write_text(path, json.dumps({"row": row, "attack": attack, "seed": seed, "n_cases": len(cases),
                                         "won": len(won_cases), "won_cases": won_cases,
                                         "delta_id": None if delta is None else delta.delta_id,
                                         "seconds": result.seconds}, indent=1) + "\n")


def table(folder: Path, attack: str, name: str | None = None) -> str:
    """Markdown table of the stored results under ``folder`` (``name``: how the folder is shown)."""
    from erasekit.eval.metrics import wilson_interval

    by_row: dict[str, list[dict]] = {}
    for path in sorted((folder / RESULTS).glob(f"*-{attack}-seed*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        by_row.setdefault(r["row"], []).append(r)
    lines = [f"Attack `{attack}` on the saved deltas of `{name or folder.as_posix()}`, same cases, one run per attack seed "
             "(the pooled interval treats the runs as independent draws, though they share the cases).",
             "", "| row | cases | won per seed (seed: won) | range | pooled rate [95% Wilson] | stored row's rate |",
             "|---|---|---|---|---|---|"]
    for row, results in by_row.items():
        results.sort(key=lambda r: r["seed"])
        n = results[0]["n_cases"]
        won = [r["won"] for r in results]
        lo, hi = wilson_interval(sum(won), n * len(won))
        stored = json.loads((folder / f"{row}.json").read_text(encoding="utf-8")).get(attack)
        per_seed = ", ".join(f"{r['seed']}: {r['won']}" for r in results)
        lines.append(f"| {row} | {n} | {per_seed} | {min(won)}-{max(won)} "
                     f"| {sum(won) / (n * len(won)):.3f} [{lo:.3f}, {hi:.3f}] "
                     f"| {'-' if stored is None else f'{stored:.3f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a robustness folder (rows <row>.json and deltas/<row>)")
    ap.add_argument("--rows", nargs="+", default=[])
    ap.add_argument("--attack", default="unlearndiff", choices=["unlearndiff", "ringabell"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--table", action="store_true", help="print the table of what is stored, run nothing")
    args = ap.parse_args(argv)
    missing = [r for r in args.rows if not (args.folder / f"{r}.json").exists()]
    if missing:
        print(f"no row {', '.join(missing)} in {args.folder}", file=sys.stderr)
        return 2
    if not args.table:
        run(args.folder, args.rows, args.attack, args.seeds)
    print(table(args.folder, args.attack))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
