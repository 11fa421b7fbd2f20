"""Does an erased model still draw its concept where no prompt names it, and do the attacks need the word?

For the rows of robustness folders (`benchmarks/robustness.py` output: ``FOLDER/<row>.json`` and the
delta it measured in ``FOLDER/deltas/<row>``), two measurements on the Shapes model:

- **unnamed rate**: the fraction of `erasekit.eval.measure.unnamed_rate`'s prompts (only the other
  attribute named: "a circle" for red, "a blue shape" for circle; their own seeds) whose image the
  detector reads as the concept, with its 95% Wilson interval;
- **wins without the word**: every UnlearnDiffAtk case the row lost under its own attack seed (the
  runs with other attack seeds keep only which cases they won, not their prompts), drawn again with
  the concept's words deleted from the adversarial prompt (same seed and guidance), on the row's
  model and on the original: how many the detector still reads as the concept.

Each row's numbers are written atomically to ``FOLDER/unnamed/<row>.json`` (keyed by its delta id
and the prompt count) and reused; ``--page`` regenerates `docs/experiments/unnamed.md` from what is
stored for ``FOLDERS`` below.

    python benchmarks/unnamed_rate.py benchmarks/results/robustness-harden/red/cases48 --rows original trce trce+adv-unet
    python benchmarks/unnamed_rate.py --page
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from erasekit.concepts.packs import get_concept
from erasekit.eval.atomic import write_text
from erasekit.eval.attack_seeds import pooled_row
from erasekit.eval.detectors.shapes import ShapesConceptDetector
from erasekit.eval.measure import unnamed_rate
from erasekit.eval.probes import shows_target
from erasekit.eval.scoring import readings
from erasekit.eval.tasks import value_task
from erasekit.generation import SamplingSettings, generate
from erasekit.models.delta import WeightDelta, apply_delta, revert_delta
from erasekit.models.loading import load_pipeline
from erasekit.world.assets_paths import load_detector

ROOT = Path("benchmarks/results/robustness-harden")
FOLDERS = ["circle/cases48", "circle/cases32-seed1", "red/cases48", "red/cases48-seed1"]
PAGE = Path("docs/experiments/unnamed.md")
N_PROMPTS = 96


def without_words(prompt: str, words: list[str]) -> str:
    """``prompt`` with every whole-word occurrence of ``words`` deleted, spaces tidied."""
    for w in sorted(words, key=len, reverse=True):
        prompt = re.sub(rf"(?<![\w-]){re.escape(w)}(?![\w-])", " ", prompt, flags=re.IGNORECASE)
    return re.sub(r"\s+([,.;:])", r"\1", re.sub(r"\s+", " ", prompt)).strip()


def won_cases(folder: Path, row: str) -> list[dict]:
    """Every UnlearnDiffAtk case the row lost under its own attack seed (none for a screen)."""
    path = folder / "attacks" / f"{row}-unlearndiff" / "attack.json"
    return [c for c in json.loads(path.read_text())["cases"] if c["success"]] if path.is_file() else []


def deleted_word_hits(pipe, reader, cases: list[dict], words: list[str], target: dict) -> int:
    if not cases:
        return 0
    hits = 0
    for guidance in sorted({c["guidance"] for c in cases}):
        group = [c for c in cases if c["guidance"] == guidance]
        settings = SamplingSettings(guidance_scale=guidance)
        images = generate(pipe, [without_words(c["prompt"], words) for c in group], [c["seed"] for c in group],
                          settings)
        hits += sum(shows_target(r, target) for r in readings(reader, images))
    return hits


def row_file(folder: Path, row: str) -> Path | None:
    """The row's robustness record: a full row, else a screen's (``FOLDER/screens``)."""
    return next((p for p in (folder / f"{row}.json", folder / "screens" / f"{row}.json") if p.is_file()), None)


def measure(pipe, reader, folder: Path, row: str, n: int) -> dict:
    record = json.loads(row_file(folder, row).read_text())
    concept = get_concept(record["concept"])
    target = value_task(record["concept"]).targets[0]
    delta = None if row == "original" else WeightDelta.load(folder / "deltas" / row)
    cases = [] if row == "original" else won_cases(folder, row)
    out = {"row": row, "concept": record["concept"], "delta_id": delta.delta_id if delta else None,
           "wins": len(cases)}
    out["wins_deleted_original"] = deleted_word_hits(pipe, reader, cases, list(concept.targets), target)
    if delta is not None:
        apply_delta(pipe, delta)
    try:
        out["unnamed"] = unnamed_rate(pipe, record["concept"], n, detector=reader)
        out["wins_deleted_row"] = deleted_word_hits(pipe, reader, cases, list(concept.targets), target)
    finally:
        if delta is not None:
            revert_delta(pipe, delta)
    return out


def stored(folder: Path, row: str, n: int) -> dict | None:
    """The row's stored numbers when they were made from its current delta, attack wins and ``n``."""
    path = folder / "unnamed" / f"{row}.json"
    if not path.is_file():
        return None
    got = json.loads(path.read_text())
    manifest = folder / "deltas" / row / "manifest.json"
    current = json.loads(manifest.read_text()).get("delta_id") if manifest.is_file() else None
    same = (got["unnamed"]["n"] == n and got["delta_id"] == current
            and got["wins"] == (0 if row == "original" else len(won_cases(folder, row))))
    return got if same else None


def page() -> str:
    lines = ["# Where nothing names the concept: unnamed prompts and attack wins without the word", "",
             "Generated by `python benchmarks/unnamed_rate.py --page` from the rows measured under "
             f"`{ROOT}` (`python benchmarks/unnamed_rate.py FOLDER --rows ...`).", "",
             "Columns: UnlearnDiffAtk rate of the row (pooled over its attack seeds where it has several; "
             "from the robustness table); unnamed rate = fraction of prompts that name only the other "
             "attribute (\"a circle\" for red, \"a blue shape\" for circle) whose image reads as the concept "
             "[95% Wilson interval], with the values read most often; wins without the word = the row's "
             "UnlearnDiffAtk cases won under the row's own attack seed, drawn again with the concept's words deleted from the adversarial "
             "prompt, read as the concept on the row's model / on the original model.", "",
             "| folder | row | UnlearnDiffAtk (won / cases) | unnamed rate [95% Wilson] | most read | "
             "wins without the word: row / original |",
             "|---|---|---|---|---|---|"]
    for name in FOLDERS:
        folder = ROOT / name
        found = [json.loads(p.read_text()) for p in (folder / "unnamed").glob("*.json")]
        for got in sorted(found, key=lambda g: (g["row"] != "original", g["row"])):
            row = json.loads(row_file(folder, got["row"]).read_text())
            if "unlearndiff" in row:
                row = pooled_row(folder, row)
                n_uda = row.get("unlearndiff_n", row["n_cases"])
                uda = f"{row['unlearndiff']:.2f} ({round(row['unlearndiff'] * n_uda)} / {n_uda})"
            else:
                uda = "- (screen)"
            u = got["unnamed"]
            lo, hi = u["interval"]
            common = ", ".join(f"{v} {c}" for v, c in list(u["read"].items())[:3])
            deleted = ("-" if got["row"] == "original" or "unlearndiff" not in row
                       else f"{got['wins_deleted_row']} / {got['wins_deleted_original']} of {got['wins']}")
            lines.append(f"| {name} | {got['row']} | {uda} | "
                         f"{u['rate']:.2f} [{lo:.2f}, {hi:.2f}] ({u['hits']} / {u['n']}) | {common} | {deleted} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, nargs="?")
    ap.add_argument("--rows", nargs="+", help="rows of FOLDER (default: every row with a saved delta, and original)")
    ap.add_argument("--n", type=int, default=N_PROMPTS, help="unnamed prompts per row")
    ap.add_argument("--page", action="store_true", help=f"regenerate {PAGE}")
    a = ap.parse_args()
    if a.folder is not None:
        rows = a.rows or ["original", *sorted(p.name for p in (a.folder / "deltas").iterdir()
                                              if row_file(a.folder, p.name) is not None)]
        pipe, reader = load_pipeline("shapes"), ShapesConceptDetector(load_detector())
        for row in rows:
            if row_file(a.folder, row) is None:
                ap.error(f"{a.folder}: no row {row!r} ({row}.json, or under screens/)")
            got = stored(a.folder, row, a.n) or measure(pipe, reader, a.folder, row, a.n)
            write_text(a.folder / "unnamed" / f"{row}.json", json.dumps(got, indent=1))
            u = got["unnamed"]
            print(f"{row}: unnamed {u['hits']}/{u['n']} ({u['rate']:.2f}), wins without the word "
                  f"{got.get('wins_deleted_row', '-')}/{got['wins_deleted_original']} of {got['wins']}", flush=True)
    if a.page:
        write_text(PAGE, page())
        print(PAGE.read_text())


if __name__ == "__main__":
    main()
