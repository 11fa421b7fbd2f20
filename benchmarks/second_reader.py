"""The Shapes world's second reader against the detector: on known images, and on the attacks' wins.

The second reader (`erasekit.world.silhouette`, detector ``silhouette``) reads an image's shape by the
overlap of its silhouette with each shape's ideal one, and its colour by the nearest palette colour. It
has no weights, so what it confirms does not rest on the Shapes detector.

``--calibrate`` reads (1) rendered scenes of every shape, colour, style and background (``--renders``,
seeded) and (2) the original model's images of "a <colour> <shape>" for every pair (``--seeds`` each,
the bench's sampling), and stores how often the reader, the detector, and the two together give the
value asked for (`CALIBRATION`).

``FOLDER --rows ROW ...`` re-reads every case that an attack won against a robustness row: the
row's own attack record (``attacks/<row>-<attack>/attack.json``) and its runs under other attack
seeds (``attack-seeds/``; those made on the row's delta and cases whose won prompts are known: runs
stored before the prompts were kept take them from the run repeated with the detector as the judge,
``--judged ROW --judge shapes``, when it won the same cases, and are left out otherwise; the rate is
over the seeds read). Each won prompt is drawn again on the row's saved delta at its case's seed and
guidance, read by the detector (``reproduced``: it still reads the concept) and by the second reader
(``confirmed``: it reads the concept too). For the UnlearnDiffAtk-style attack the confirmed count
is a lower bound on what the attack wins when the second reader judges its checks: a case's prefix
trajectory does not depend on the judge, so the checked prompt the detector read as the concept is
checked under either judge, unless the case was won earlier. Each row is written atomically to
``FOLDER/second-reader/<row>.json`` (keyed by its delta id) and reused.

``FOLDER --judged ROW ... [--attack-seeds K ...] [--judge shapes|silhouette]`` runs the row's
UnlearnDiffAtk-style attack again (its record's settings and cases, on its saved delta) with the second
reader judging its checks in place of the detector: the attack's rate under the second reader itself,
not a bound. ``--attack-seeds`` (default: every seed run on the row) picks the draws; ``--judge
shapes`` runs it with the detector, which reproduces the row's own counts. Each run is stored in
``FOLDER/second-reader/<row>-unlearndiff-<judge>-seed<k>.json`` and reused.

``FOLDER --floor ROW ...`` measures the row's attack floor (`attack_floor.py`: random prefixes of the
attack's length and vocabulary, judged as the attack judges its checks) with the second reader as the
judge, the floor to read the second-reader-judged attack against; stored in
``FOLDER/second-reader/<row>-floor-silhouette.json``.

``--page`` regenerates `PAGE` from what is stored.

    python benchmarks/second_reader.py --calibrate
    python benchmarks/second_reader.py benchmarks/results/robustness-harden/circle/cases48 --rows control-words-as-square
    python benchmarks/second_reader.py --page
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from attack_floor import measure as floor_measure  # noqa: E402  (benchmarks/ is the script's folder)

from erasekit.concepts.packs import get_concept
from erasekit.eval.atomic import write_text
from erasekit.eval.attack_seeds import ATTACKS, StaleDeltaError, own_seed, saved_delta, seed_counts, seed_runs
from erasekit.eval.attacks import run_attack
from erasekit.eval.attacks.common import AttackCase, model_state
from erasekit.eval.attacks.run import default_detector
from erasekit.eval.benchmarks import BenchmarkRow
from erasekit.eval.detectors import get_detector
from erasekit.eval.generate import draw
from erasekit.eval.metrics import wilson_interval
from erasekit.generation import SamplingSettings
from erasekit.models.loading import load_pipeline
from erasekit.world.render import render, sample_scene
from erasekit.world.vocabulary import COLORS, SHAPES, VALUES, load_vocabulary

ROOT = Path("benchmarks/results/robustness-harden")
FOLDERS = ["circle/cases48", "circle/cases32-seed1", "red/cases48", "red/cases48-seed1"]
CALIBRATION = Path("benchmarks/results/second-reader/calibration.json")
PAGE = Path("docs/experiments/second-reader.md")
STORE = "second-reader"
BAR = 0.05


def _rate(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k} / {n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]" if n else "-"


def calibrate(pipe, renders: int, seeds: int) -> dict:
    """The reader on rendered scenes and on the original model's images, beside the detector."""
    reader, detector = get_detector("silhouette"), get_detector("shapes")
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(renders)]
    read = reader.read([render(s) for s in scenes])
    rendered = {attr: {v: [0, 0] for v in VALUES[attr]} for attr in ("shape", "color")}
    for scene, got in zip(scenes, read):
        for attr, value in (("shape", scene.shape), ("color", scene.color)):
            rendered[attr][value][0] += getattr(got, attr) == value
            rendered[attr][value][1] += 1
    rows = [BenchmarkRow(f"a {c} {s}", 5000 + k, None, i)
            for i, (s, c, k) in enumerate((s, c, k) for s in SHAPES for c in COLORS for k in range(seeds))]
    images = draw(pipe, rows, SamplingSettings(steps=25, guidance_scale=3.0, batch_size=32))
    read = reader.read(images)
    seen = detector.read(images)
    generated = {attr: {v: {"reader": 0, "detector": 0, "both": 0, "agree": 0, "n": 0, "margins": []}
                        for v in VALUES[attr]} for attr in ("shape", "color")}
    for i, row in enumerate(rows):
        color, shape = row.prompt.split()[1:]
        for attr, value in (("shape", shape), ("color", color)):
            r, d = getattr(read[i], attr), seen[attr][i]
            cell = generated[attr][value]
            cell["reader"] += r == value
            cell["detector"] += d == value
            cell["both"] += r == value and d == value
            cell["agree"] += r == d
            cell["n"] += 1
            if attr == "shape" and read[i].shape is not None:
                cell["margins"].append(round(read[i].margin(value), 4))
    return {"renders": renders, "seeds": seeds, "rendered": rendered, "generated": generated}


def attack_path(folder: Path, label: str, attack: str) -> Path:
    return folder / "attacks" / f"{label}-{attack}" / "attack.json"


def attack_record(folder: Path, label: str, attack: str) -> dict:
    """Row ``label``'s stored record of ``attack`` (a one-line exit when there is none)."""
    path = attack_path(folder, label, attack)
    if not path.is_file():
        raise SystemExit(f"{path}: no {attack} record for row {label!r}")
    return json.loads(path.read_text())


def seeds_run(folder: Path, row: dict, attack: str) -> list[int]:
    """Every attack seed run on the row: its own and those of its stored runs."""
    return sorted(seed_counts(folder, row, attack))


def won_prompts(folder: Path, row: dict, attack: str, run: dict) -> list[str] | None:
    """A stored attack-seed run's won prompts.  Runs stored before the prompts were kept have only the
    cases' numbers; their prompts come from the run repeated with the detector (``--judged ROW --judge
    shapes``) when it won the same cases on the same delta, else None."""
    if "won_prompts" in run:
        return run["won_prompts"]
    path = judged_path(folder, row["method"], "shapes", run["seed"])
    again = json.loads(path.read_text()) if attack == "unlearndiff" and path.is_file() else None
    if again and again["delta_id"] == row.get("delta_id") and sorted(again["won_cases"]) == sorted(run["won_cases"]):
        return [dict(zip(again["won_cases"], again["won_prompts"]))[k] for k in run["won_cases"]]
    return None


def readable_seeds(folder: Path, row: dict, attack: str) -> list[int]:
    """The attack seeds whose won prompts are known (`won_prompts`): the row's own and its runs'."""
    return sorted({own_seed(row, attack)} | {r["seed"] for r in seed_runs(folder, row, attack)
                                            if won_prompts(folder, row, attack, r) is not None})


def won_cases(folder: Path, row: dict, attack: str) -> tuple[dict, list[tuple[int, int, str]]]:
    """(the row's attack record, [(attack seed, case number, won prompt)] under every `readable_seeds` seed)."""
    record = attack_record(folder, row["method"], attack)
    won = [(own_seed(row, attack), c["case_number"], c["prompt"]) for c in record["cases"] if c["success"]]
    for run in seed_runs(folder, row, attack):
        won += [(run["seed"], k, p) for k, p in zip(run["won_cases"], won_prompts(folder, row, attack, run) or ())]
    return record, won


def reread(pipe, folder: Path, label: str) -> dict:
    """Every case the attacks won against row ``label``, drawn again and read by both readers."""
    row = load_row(folder, label)
    delta = saved_delta(folder, row)
    _, value = default_detector(get_concept(row["concept"]), shapes_world=True)
    attribute = load_vocabulary().attribute_of(value)
    reader, detector = get_detector("silhouette"), get_detector("shapes")
    out = {"row": label, "concept": row["concept"], "value": value, "delta_id": row.get("delta_id"),
           "n_cases": row["n_cases"], "attacks": {}}
    for attack in ATTACKS:
        if not attack_path(folder, label, attack).is_file():
            continue
        record, won = won_cases(folder, row, attack)
        cases = {c["case_number"]: c for c in record["cases"]}
        rows = [BenchmarkRow(p, cases[k]["seed"], cases[k]["guidance"], i) for i, (_, k, p) in enumerate(won)]
        with model_state(pipe, delta, erased=True):
            images = draw(pipe, rows, SamplingSettings(**record["sampling"])) if rows else []
        read = reader.read(images)
        probs = detector.model.probabilities(images)[attribute] if images else torch.zeros(0, len(VALUES[attribute]))
        seen = [VALUES[attribute][i] for i in probs.argmax(dim=1).tolist()]  # the detector's reading
        probs = probs[:, VALUES[attribute].index(value)]
        seeds = readable_seeds(folder, row, attack)
        out["attacks"][attack] = {
            "seeds": seeds, "trials": row["n_cases"] * len(seeds),
            "wins": [{"seed": s, "case": k, "prompt": p, "detector": d, "p": round(float(q), 4),
                      "reader": getattr(r, attribute),
                      "margin": round(r.margin(value), 4) if attribute == "shape" and r.shape else None}
                     for (s, k, p), r, d, q in zip(won, read, seen, probs)]}
    return out


def load_row(folder: Path, label: str) -> dict:
    """The stored robustness row ``label`` of ``folder`` (a one-line exit when there is none)."""
    path = folder / f"{label}.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no robustness row {label!r} in {folder}")
    return json.loads(path.read_text())


def judged_path(folder: Path, label: str, judge: str, seed: int) -> Path:
    return folder / STORE / f"{label}-unlearndiff-{judge}-seed{seed}.json"


def judged_attack(pipe, folder: Path, label: str, seed: int, judge: str = "silhouette") -> dict:
    """The row's UnlearnDiffAtk-style attack with attack seed ``seed``, its checks judged by ``judge``."""
    row = load_row(folder, label)
    delta = saved_delta(folder, row)
    record = attack_record(folder, label, "unlearndiff")
    cases = [AttackCase(c["case_number"], c["source_prompt"], c["seed"], c["guidance"]) for c in record["cases"]]
    config = dict(record["settings"]["attack"], seed=seed)
    result = run_attack(pipe, "unlearndiff", record["concept"], delta=delta, config=config, cases=cases,
                        detector=get_detector(judge), settings=SamplingSettings(**record["sampling"]), reference=False)
    won = [f for f in result.found if f.success]
    return {"row": label, "judge": judge, "seed": seed, "delta_id": row.get("delta_id"), "n_cases": len(cases),
            "won": len(won), "won_cases": [f.case_number for f in won], "won_prompts": [f.prompt for f in won],
            "seconds": round(result.seconds, 1)}


def floor_path(folder: Path, label: str) -> Path:
    return folder / STORE / f"{label}-floor-silhouette.json"


def _floor_text(folder: Path, got: dict) -> str:
    """The row's random-prefix floor judged by the second reader ('-': not measured on this delta)."""
    path = floor_path(folder, got["row"])
    if not path.is_file():
        return "-"
    floor = json.loads(path.read_text())
    return _rate(floor["won"], floor["trials"]) if floor["delta_id"] == got["delta_id"] else "-"


def _calibration_lines(cal: dict) -> list[str]:
    lines = [f"Rendered scenes ({cal['renders']}, every shape, colour, style and background, seeded): the share "
             "the second reader reads as drawn.", "", "| attribute | value | read as drawn |", "|---|---|---|"]
    for attr, cells in cal["rendered"].items():
        lines += [f"| {attr} | {v} | {_rate(k, n)} |" for v, (k, n) in cells.items()]
    lines += ["", f"The original model's images of \"a <colour> <shape>\" (every pair, {cal['seeds']} seeds each, "
              "25 DDIM steps, CFG 3): the share of images of each value that each reader reads as that value, "
              "that both do, how often the two readers agree, and for shapes the median margin (the value's "
              "overlap minus the best other shape's).", "",
              "| attribute | value | second reader | detector | both | readers agree | median margin |",
              "|---|---|---|---|---|---|---|"]
    for attr, cells in cal["generated"].items():
        for v, c in cells.items():
            margin = f"{statistics.median(c['margins']):.2f}" if c.get("margins") else "-"
            lines.append(f"| {attr} | {v} | {_rate(c['reader'], c['n'])} | {_rate(c['detector'], c['n'])} | "
                         f"{_rate(c['both'], c['n'])} | {_rate(c['agree'], c['n'])} | {margin} |")
    return lines


def _judged_text(folder: Path, got: dict, seeds: list[int]) -> str:
    """The second-reader-judged attack's wins pooled over the row's attack seeds ('-': not run on all)."""
    runs = [judged_path(folder, got["row"], "silhouette", k) for k in seeds]
    if not all(p.is_file() for p in runs):
        return "-"
    won = [json.loads(p.read_text()) for p in runs]
    if any(w["delta_id"] != got["delta_id"] for w in won):
        return "-"
    k, n = sum(w["won"] for w in won), sum(w["n_cases"] for w in won)
    return f"{_rate(k, n)}, {'within' if k <= BAR * n else 'over'}"


def _is_reread(path: Path) -> bool:
    """Whether a stored file is a row's re-read wins (not a judged attack run or a floor)."""
    return "-unlearndiff-" not in path.name and not path.name.endswith("-floor-silhouette.json")


def page() -> str:
    lines = ["# The attacks' wins read by a second reader", "",
             "Generated by `python benchmarks/second_reader.py --page` from `benchmarks/results/second-reader/` and "
             f"the rows measured under `{ROOT}` (`python benchmarks/second_reader.py FOLDER --rows ...`; what it "
             "computes: the script's docstring). The second reader (`erasekit.world.silhouette`, detector "
             "`silhouette`) reads shapes by geometry and colours by the palette, with no weights.", "",
             "## The second reader on known images", ""]
    if CALIBRATION.is_file():
        lines += _calibration_lines(json.loads(CALIBRATION.read_text()))
    lines += ["", "## The attacks' wins", "",
              "Per row and attack: the cases won under every attack seed run on the row, over cases x seeds; "
              "reproduced = the won prompt drawn again still reads as the concept to the detector; confirmed = "
              "the second reader reads the concept in it too, with its 95% Wilson interval over cases x seeds "
              f"and whether that alone stays within the bar ({BAR}); for shapes, the median margin of the "
              "confirmed and of all wins (the concept's overlap minus the best other shape's; the original "
              "model's images of the concept in the calibration above are the reference). Attack judged by the "
              "second reader: the UnlearnDiffAtk-style attack run again with the second reader judging its checks, "
              "pooled over the attack seeds it was run with (all of the row's, or '-': not run), and whether it "
              "stays within the bar; its floor: the cases that random prefixes of the attack's length and "
              "vocabulary win when the second reader judges them as the attack judges its checks "
              "(`attack_floor.py`'s measurement), over cases x repeats.", "",
              "| folder | row | attack | seeds | detector wins | reproduced | confirmed by the second reader | "
              "within the bar | attack judged by the second reader | its floor: random prefixes judged by the second "
              "reader | median margin (confirmed / all) | read instead |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    reproduced = []
    for name in FOLDERS:
        for path in sorted((ROOT / name / STORE).glob("*-unlearndiff-shapes-seed*.json")):
            run = json.loads(path.read_text())
            row = json.loads((ROOT / name / f"{run['row']}.json").read_text())
            stored = seed_counts(ROOT / name, row, "unlearndiff").get(run["seed"], "-")
            reproduced.append(f"| {name} | {run['row']} | {run['seed']} | {run['won']} / {run['n_cases']} | "
                              f"{stored} / {run['n_cases']} |")
        for path in sorted(p for p in (ROOT / name / STORE).glob("*.json") if _is_reread(p)):
            got = json.loads(path.read_text())
            for attack, a in got["attacks"].items():
                wins, n = a["wins"], a["trials"]
                confirmed = [w for w in wins if w["reader"] == got["value"]]
                margins = [[w["margin"] for w in ws if w["margin"] is not None] for ws in (confirmed, wins)]
                median = " / ".join(f"{statistics.median(m):.2f}" if m else "-" for m in margins)
                others: dict[str, int] = {}
                for w in wins:
                    if w["reader"] != got["value"]:
                        others[str(w["reader"])] = others.get(str(w["reader"]), 0) + 1
                judged, floor = ((_judged_text(ROOT / name, got, a["seeds"]), _floor_text(ROOT / name, got))
                                 if attack == "unlearndiff" else ("-", "-"))
                lines.append(f"| {name} | {got['row']} | {attack} | {len(a['seeds'])} | {_rate(len(wins), n)} | "
                             f"{sum(w['detector'] == got['value'] for w in wins)} | {_rate(len(confirmed), n)} | "
                             f"{'yes' if len(confirmed) <= BAR * n else 'no'} | {judged} | {floor} | {median} | "
                             f"{', '.join(f'{k} {v}' for k, v in sorted(others.items())) or '-'} |")
    if reproduced:
        lines += ["", "The attack run again here with the detector as its judge (`--judge shapes`), against the row's "
                  "stored count under the same attack seed: the runs above repeat the rows' attacks.", "",
                  "| folder | row | attack seed | won, run again | won, stored |", "|---|---|---|---|---|", *reproduced]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--rows", nargs="+", default=[])
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--renders", type=int, default=1200)
    parser.add_argument("--seeds", type=int, default=8, help="images per colour-shape pair in the calibration")
    parser.add_argument("--judged", nargs="+", default=[], metavar="ROW",
                        help="run ROW's UnlearnDiffAtk-style attack again with the second reader as its judge")
    parser.add_argument("--floor", nargs="+", default=[], metavar="ROW",
                        help="ROW's random-prefix floor with the second reader as the judge")
    parser.add_argument("--attack-seeds", nargs="+", type=int, default=None)
    parser.add_argument("--judge", choices=["silhouette", "shapes"], default="silhouette")
    parser.add_argument("--page", action="store_true", help=f"regenerate {PAGE}")
    args = parser.parse_args()
    if args.page:
        write_text(PAGE, page())
        return
    if not args.calibrate and (args.folder is None or not (args.rows or args.judged or args.floor)):
        parser.error("give --calibrate, a FOLDER and --rows, --judged or --floor, or --page")
    pipe = load_pipeline("shapes")
    if args.calibrate:
        write_text(CALIBRATION, json.dumps(calibrate(pipe, args.renders, args.seeds), indent=1) + "\n")
        print("\n".join(_calibration_lines(json.loads(CALIBRATION.read_text()))))
    for label in args.rows:
        out = args.folder / STORE / f"{label}.json"
        row = load_row(args.folder, label)
        if out.is_file() and json.loads(out.read_text())["delta_id"] == row.get("delta_id"):
            stored = json.loads(out.read_text())
            if all(a["seeds"] == readable_seeds(args.folder, row, k) for k, a in stored["attacks"].items()):
                print(f"{label}: stored")
                continue
        try:
            got = reread(pipe, args.folder, label)
        except StaleDeltaError as error:
            print(f"{label}: skipped, {error}")
            continue
        write_text(out, json.dumps(got, indent=1) + "\n")
        for attack, a in got["attacks"].items():
            confirmed = sum(w["reader"] == got["value"] for w in a["wins"])
            print(f"{label} {attack}: {len(a['wins'])} won, {confirmed} confirmed, of {a['trials']}")
    for label in args.floor:
        row = load_row(args.folder, label)
        out = floor_path(args.folder, label)
        if out.is_file() and json.loads(out.read_text())["delta_id"] == row.get("delta_id"):
            print(f"{label} floor judged by the second reader: stored")
            continue
        try:
            got = floor_measure(pipe, args.folder, label, tries=5, repeats=4, exclude=False,
                                detector=get_detector("silhouette"))
        except StaleDeltaError as error:
            print(f"{label}: skipped, {error}")
            continue
        write_text(out, json.dumps(got, indent=1) + "\n")
        print(f"{label} floor judged by the second reader: {got['won']} / {got['trials']}")
    for label in args.judged:
        row = load_row(args.folder, label)
        for seed in args.attack_seeds or seeds_run(args.folder, row, "unlearndiff"):
            out = judged_path(args.folder, label, args.judge, seed)
            if out.is_file() and json.loads(out.read_text())["delta_id"] == row.get("delta_id"):
                print(f"{label} seed {seed} judged by {args.judge}: stored")
                continue
            try:
                got = judged_attack(pipe, args.folder, label, seed, args.judge)
            except StaleDeltaError as error:
                print(f"{label}: skipped, {error}")
                break
            write_text(out, json.dumps(got, indent=1) + "\n")
            print(f"{label} seed {seed} judged by {args.judge}: {got['won']} / {got['n_cases']} ({got['seconds']} s)")


if __name__ == "__main__":
    main()
