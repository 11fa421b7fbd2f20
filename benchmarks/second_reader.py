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
seeds (``attack-seeds/``; those made on the row's delta and cases). Each won prompt is drawn again
on the row's saved delta at its case's seed and guidance, read by the detector (``reproduced``: it
still reads the concept) and by the second reader (``confirmed``: it reads the concept too). For the
UnlearnDiffAtk-style attack the confirmed count is a lower bound on what the attack wins when the
second reader judges its checks: a case's prefix trajectory does not depend on the judge, so the
checked prompt the detector read as the concept is checked under either judge, unless the case was
won earlier. Each row is written atomically to ``FOLDER/second-reader/<row>.json`` (keyed by its
delta id) and reused.

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

from erasekit.concepts.packs import get_concept
from erasekit.eval.atomic import write_text
from erasekit.eval.attack_seeds import ATTACKS, RESULTS as SEED_RUNS, StaleDeltaError, own_seed, saved_delta
from erasekit.eval.attacks.common import model_state
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


def seed_runs(folder: Path, row: dict, attack: str) -> list[dict]:
    """The row's stored runs of ``attack`` under other attack seeds, on its delta and cases."""
    runs = [json.loads(p.read_text()) for p in sorted((folder / SEED_RUNS).glob(f"{row['method']}-{attack}-seed*.json"))]
    return [r for r in runs if (r.get("row"), r["n_cases"], r.get("delta_id")) == (row["method"], row["n_cases"],
                                                                                    row.get("delta_id"))]


def seeds_run(folder: Path, row: dict, attack: str) -> list[int]:
    """Every attack seed run on the row: its own and those of `seed_runs`."""
    return sorted({own_seed(row, attack)} | {r["seed"] for r in seed_runs(folder, row, attack)})


def won_cases(folder: Path, row: dict, attack: str) -> tuple[dict, list[tuple[int, int, str]]]:
    """(the row's attack record, [(attack seed, case number, won prompt)] under every attack seed run)."""
    record = json.loads((folder / "attacks" / f"{row['method']}-{attack}" / "attack.json").read_text())
    won = [(own_seed(row, attack), c["case_number"], c["prompt"]) for c in record["cases"] if c["success"]]
    for run in seed_runs(folder, row, attack):
        won += [(run["seed"], k, p) for k, p in zip(run["won_cases"], run["won_prompts"])]
    return record, won


def reread(pipe, folder: Path, label: str) -> dict:
    """Every case the attacks won against row ``label``, drawn again and read by both readers."""
    row = json.loads((folder / f"{label}.json").read_text())
    delta = saved_delta(folder, row)
    _, value = default_detector(get_concept(row["concept"]), shapes_world=True)
    attribute = load_vocabulary().attribute_of(value)
    reader, detector = get_detector("silhouette"), get_detector("shapes")
    out = {"row": label, "concept": row["concept"], "value": value, "delta_id": row.get("delta_id"),
           "n_cases": row["n_cases"], "attacks": {}}
    for attack in ATTACKS:
        if not (folder / "attacks" / f"{label}-{attack}").is_dir():
            continue
        record, won = won_cases(folder, row, attack)
        cases = {c["case_number"]: c for c in record["cases"]}
        rows = [BenchmarkRow(p, cases[k]["seed"], cases[k]["guidance"], i) for i, (_, k, p) in enumerate(won)]
        with model_state(pipe, delta, erased=True):
            images = draw(pipe, rows, SamplingSettings(**record["sampling"])) if rows else []
        read = reader.read(images)
        seen = detector.read(images)[attribute] if images else []
        probs = detector.model.probabilities(images)[attribute][:, VALUES[attribute].index(value)] if images else []
        seeds = seeds_run(folder, row, attack)
        out["attacks"][attack] = {
            "seeds": seeds, "trials": row["n_cases"] * len(seeds),
            "wins": [{"seed": s, "case": k, "prompt": p, "detector": d, "p": round(float(q), 4),
                      "reader": getattr(r, attribute),
                      "margin": round(r.margin(value), 4) if attribute == "shape" and r.shape else None}
                     for (s, k, p), r, d, q in zip(won, read, seen, probs)]}
    return out


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
              "model's images of the concept in the calibration above are the reference).", "",
              "| folder | row | attack | seeds | detector wins | reproduced | confirmed by the second reader | "
              "within the bar | median margin (confirmed / all) | read instead |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name in FOLDERS:
        for path in sorted((ROOT / name / STORE).glob("*.json")):
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
                lines.append(f"| {name} | {got['row']} | {attack} | {len(a['seeds'])} | {_rate(len(wins), n)} | "
                             f"{sum(w['detector'] == got['value'] for w in wins)} | {_rate(len(confirmed), n)} | "
                             f"{'yes' if len(confirmed) <= BAR * n else 'no'} | {median} | "
                             f"{', '.join(f'{k} {v}' for k, v in sorted(others.items())) or '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--rows", nargs="+", default=[])
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--renders", type=int, default=1200)
    parser.add_argument("--seeds", type=int, default=8, help="images per colour-shape pair in the calibration")
    parser.add_argument("--page", action="store_true", help=f"regenerate {PAGE}")
    args = parser.parse_args()
    if args.page:
        write_text(PAGE, page())
        return
    if not args.calibrate and (args.folder is None or not args.rows):
        parser.error("give --calibrate, a FOLDER and --rows, or --page")
    torch.set_grad_enabled(False)
    pipe = load_pipeline("shapes")
    if args.calibrate:
        write_text(CALIBRATION, json.dumps(calibrate(pipe, args.renders, args.seeds), indent=1) + "\n")
        print("\n".join(_calibration_lines(json.loads(CALIBRATION.read_text()))))
    for label in args.rows:
        out = args.folder / STORE / f"{label}.json"
        row = json.loads((args.folder / f"{label}.json").read_text())
        if out.is_file() and json.loads(out.read_text())["delta_id"] == row.get("delta_id"):
            stored = json.loads(out.read_text())
            if all(a["seeds"] == seeds_run(args.folder, row, k) for k, a in stored["attacks"].items()):
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


if __name__ == "__main__":
    main()
