"""The UnlearnDiffAtk-style attack's floor: what its judging gives to prefixes it never optimised.

The measuring attack (`erasekit.eval.attacks.unlearndiff`) judges each case's plain prompt and then
its current prefix every ``check_every`` steps, each time drawing the image from the case's own seed,
and counts the case won at the first image the detector reads as the concept. This script replaces
the optimised prefixes by random ones: for every case of a row's stored UnlearnDiffAtk record (its
prompt, seed and guidance, under the row's own attack seed), the plain prompt and ``tries`` prefixes
of ``n_tokens`` words drawn uniformly from the attack's vocabulary (the same words and the same
concept-word setting as the record's attack; ``--exclude-concept-words`` leaves the concept's words
out) are judged on the row's model exactly as the attack judges its candidates. With ``tries`` the
attack's number of checks after the plain prompt (``steps / check_every``), a case won here is won
without any search: the rate is the floor under which the attack's rate says nothing about the
erasure. ``repeats`` independent draws of the prefixes are pooled (cases x repeats, 95% Wilson
interval); the per-image rate is the share of all judged prefixed images read as the concept.

``--as VALUE`` measures the judge's floor on the original model with the case prompts naming VALUE in
place of the concept ("a green square" for "a green circle", the concept's own words replaced; the
article follows the new word): what the same judging gives to a model that draws VALUE when asked for
the concept, as an erasure toward the anchor VALUE would at best. Its rows are stored as
``original-as-VALUE``.

Each row's numbers are written atomically to ``FOLDER/attack-floor/<row>.json`` (keyed by its delta
id and the settings) and reused; ``--page`` regenerates `docs/experiments/attack-floor.md` from what
is stored under the folders below.

    python benchmarks/attack_floor.py benchmarks/results/robustness-harden/circle/cases48 --rows original trce-eta100
    python benchmarks/attack_floor.py benchmarks/results/robustness-harden/circle/cases48 --as square triangle
    python benchmarks/attack_floor.py --page

``--images ROW`` draws the first repeat's prefixed images of ``ROW`` again and writes those the detector
reads as the concept, above the original model's image of the same prompt and seed, to
``FOLDER/attack-floor/<row>-read-as-concept.png``, and prints each one's prompt and its two likeliest values.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from erasekit.concepts.packs import get_concept
from erasekit.eval.atomic import write_text
from erasekit.eval.attack_seeds import StaleDeltaError, attack_text, pooled_row, saved_delta
from erasekit.eval.attacks.common import make_judge, model_state
from erasekit.eval.attacks.run import default_detector
from erasekit.eval.attacks.tokens import tokens_to_text
from erasekit.eval.benchmarks import BenchmarkRow
from erasekit.eval.generate import draw
from erasekit.eval.metrics import wilson_interval
from erasekit.eval.robustness_table import FLOOR_DIR
from erasekit.generation import SamplingSettings
from erasekit.models.loading import load_pipeline
from erasekit.models.vocabulary import resolve_vocabulary, words_of
from erasekit.world.atomic import save_image
from erasekit.world.vocabulary import VALUES, load_vocabulary

ROOT = Path("benchmarks/results/robustness-harden")
FOLDERS = ["circle/cases48", "circle/cases32-seed1", "red/cases48", "red/cases48-seed1"]
PAGE = Path("docs/experiments/attack-floor.md")
SEED = 2024  # the prefixes' generator; independent of every attack seed


def attack_record(folder: Path, row: str) -> dict:
    path = folder / "attacks" / f"{row}-unlearndiff" / "attack.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no UnlearnDiffAtk record for row {row!r}")
    return json.loads(path.read_text())


def prefixes(tokenizer, record: dict, tries: int, repeats: int, exclude: bool) -> list[list[list[str]]]:
    """[repeat][case][try] prefix texts drawn uniformly from the record's attack vocabulary."""
    attack = record["settings"]["attack"]
    concept = get_concept(record["concept"])
    excluded = words_of(concept.targets) if (exclude or attack["exclude_concept_words"]) else ()
    allowed = resolve_vocabulary(tokenizer, attack["vocabulary"], excluded)
    g = torch.Generator().manual_seed(SEED)
    n_cases = len(record["cases"])
    draws = allowed[torch.randint(len(allowed), (repeats, n_cases, tries, attack["n_tokens"]), generator=g)]
    return [[[tokens_to_text(tokenizer, t.tolist()) for t in case] for case in rep] for rep in draws]


def named_as(prompt: str, words: set[str], value: str) -> str:
    """``prompt`` with every whole word of ``words`` replaced by ``value`` (and "a"/"an" before it made to fit)."""
    pattern = r"\b(?:(a|an) )?(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b"

    def swap(match: re.Match) -> str:
        article = match.group(1)
        if article is None:
            return value
        return ("an " if value[0].lower() in "aeiou" else "a ") + value

    out, n = re.subn(pattern, swap, prompt, flags=re.IGNORECASE)
    if n == 0:
        raise ValueError(f"case prompt {prompt!r} names none of {sorted(words)}")
    return out


def row_delta(folder: Path, row: str, record: dict):
    """The delta saved for ``row`` (None for the original), checked against the one its attack record measured."""
    return saved_delta(folder, {"method": row, "delta_id": (record.get("delta") or {}).get("delta_id")})


def measure(pipe, folder: Path, row: str, tries: int, repeats: int, exclude: bool, name_as: str | None = None,
            detector=None) -> dict:
    """The row's floor (see the module docstring), judged by ``detector`` (None: the attack's own, the Shapes detector)."""
    if name_as is not None and row != "original":
        raise ValueError("--as measures the original model, not a row's delta")
    record = attack_record(folder, row)
    concept = get_concept(record["concept"])
    default, detector_concept = default_detector(concept, shapes_world=True)
    detector = detector or default
    judge = make_judge(pipe, detector, detector_concept, SamplingSettings(**record["sampling"]))
    cases = record["cases"]
    sources = [c["source_prompt"] for c in cases]
    if name_as is not None:
        sources = [named_as(p, words_of(concept.targets), name_as) for p in sources]
    drawn = prefixes(pipe.tokenizer, record, tries, repeats, exclude)
    delta = row_delta(folder, row, record)
    with model_state(pipe, delta, erased=True):
        plain = judge(sources, [c["seed"] for c in cases], [c["guidance"] for c in cases])
        won, images, hits = 0, 0, 0
        for rep in drawn:
            prompts = [f"{p} {source}" for source, tries_ in zip(sources, rep) for p in tries_]
            seeds = [c["seed"] for c in cases for _ in range(tries)]
            guidance = [c["guidance"] for c in cases for _ in range(tries)]
            ok = judge(prompts, seeds, guidance)
            images, hits = images + len(ok), hits + sum(ok)
            won += sum(plain[i] or any(ok[i * tries:(i + 1) * tries]) for i in range(len(cases)))
    return {"row": row, "concept": record["concept"], "delta_id": delta.delta_id if delta else None,
            "tries": tries, "repeats": repeats, "exclude_concept_words": exclude, "named_as": name_as,
            "cases": len(cases),
            "won": won, "trials": len(cases) * repeats, "images": images, "image_hits": hits,
            "plain_won": sum(plain), "attack_won": sum(c["success"] for c in cases)}


def read_as_concept(pipe, folder: Path, row: str, tries: int, exclude: bool):
    """(a grid image, one line per column): repeat 0's prefixed images of ``row`` read as the concept (bottom),
    each under the original model's image of the same prompt and seed (top)."""
    from PIL import Image

    record = attack_record(folder, row)
    concept = get_concept(record["concept"])
    detector, value = default_detector(concept, shapes_world=True)
    attribute = load_vocabulary().attribute_of(value)
    cases, settings = record["cases"], SamplingSettings(**record["sampling"])
    rows = [BenchmarkRow(f"{p} {c['source_prompt']}", c["seed"], c["guidance"], k)
            for k, (c, case_tries) in enumerate(zip(cases, prefixes(pipe.tokenizer, record, tries, 1, exclude)[0]))
            for p in case_tries]
    original, delta = draw(pipe, rows, settings), row_delta(folder, row, record)
    if delta is None:  # the original row: the same images
        erased = original
    else:
        with model_state(pipe, delta, erased=True):
            erased = draw(pipe, rows, settings)
    probs = detector.model.probabilities(erased)[attribute]  # the Shapes detector's every value, for the top two
    names = VALUES[attribute]
    lost = [i for i in range(len(rows)) if int(probs[i].argmax()) == names.index(value)]
    side = 128
    grid = Image.new("RGB", (max(1, len(lost)) * (side + 4), 2 * side + 4), "white")
    lines = []
    for j, i in enumerate(lost):
        grid.paste(original[i].resize((side, side), Image.NEAREST), (j * (side + 4), 0))
        grid.paste(erased[i].resize((side, side), Image.NEAREST), (j * (side + 4), side + 4))
        top = probs[i].topk(2)
        lines.append(f"{j}: {rows[i].prompt!r}: {names[int(top.indices[0])]} {float(top.values[0]):.2f}, "
                     f"{names[int(top.indices[1])]} {float(top.values[1]):.2f}")
    return grid, lines


def page() -> str:
    lines = ["# The attack's floor: random prefixes judged as the UnlearnDiffAtk-style attack judges", "",
             f"Generated by `python benchmarks/attack_floor.py --page` from the rows measured under `{ROOT}` "
             "(`python benchmarks/attack_floor.py FOLDER --rows ...`; what it computes: the script's docstring).", "",
             "Columns: UnlearnDiffAtk = cases the attack won against the row under the row's own attack seed; "
             "pooled = its rate over every attack seed the row was attacked with [95% Wilson] (the table of "
             "[harden.md](harden.md)); "
             "random prefixes = cases won by the plain prompt or by any of `tries` random prefixes of the "
             "attack's length and vocabulary, judged at the case's seed as the attack judges its checks, pooled "
             "over `repeats` independent draws [95% Wilson interval]; per image = share of the judged prefixed "
             "images read as the concept. Rows \"original, the case prompts naming V\": the original model asked "
             "for V in place of the concept (`--as V`), the floor of an erasure that draws V.", "",
             "| folder | row | concept words in the prefixes | UnlearnDiffAtk (won / cases) | pooled | random prefixes: "
             "won / trials [95% Wilson] | per image | tries x repeats |",
             "|---|---|---|---|---|---|---|---|"]
    for name in FOLDERS:
        found = [json.loads(p.read_text()) for p in sorted((ROOT / name / FLOOR_DIR).glob("*.json"))]
        order = {"original": 0}
        for got in sorted(found, key=lambda g: (order.get(g["row"], 1), g.get("named_as") or "", g["row"],
                                                 g["exclude_concept_words"])):
            lo, hi = wilson_interval(got["won"], got["trials"])
            row_path = ROOT / name / f"{got['row']}.json"
            pooled = (attack_text(pooled_row(ROOT / name, json.loads(row_path.read_text())), "unlearndiff")
                      if got["row"] != "original" and row_path.is_file() else "-")
            label, attack = got["row"], f"{got['attack_won']} / {got['cases']}"
            if got.get("named_as"):
                label, attack = f"original, the case prompts naming {got['named_as']}", "-"
            lines.append(f"| {name} | {label} | {'no' if got['exclude_concept_words'] else 'yes'} | "
                         f"{attack} | {pooled} | {got['won']} / {got['trials']} = "
                         f"{got['won'] / got['trials']:.2f} [{lo:.2f}, {hi:.2f}] | "
                         f"{got['image_hits'] / got['images']:.3f} | {got['tries']} x {got['repeats']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--rows", nargs="+", default=[])
    parser.add_argument("--tries", type=int, default=5, help="random prefixes per case and repeat (the attack's "
                        "checks after the plain prompt: steps / check_every)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--exclude-concept-words", action="store_true")
    parser.add_argument("--as", dest="name_as", nargs="+", default=[], metavar="VALUE",
                        help="the original model with the case prompts naming VALUE in place of the concept")
    parser.add_argument("--page", action="store_true", help=f"regenerate {PAGE} from the stored rows")
    parser.add_argument("--images", metavar="ROW", help="write ROW's prefixed images read as the concept")
    args = parser.parse_args()
    if args.page:
        write_text(PAGE, page())
        return
    if args.folder is None or not (args.rows or args.name_as or args.images):
        parser.error("give a FOLDER and --rows, --as or --images, or --page")
    pipe = load_pipeline("shapes")
    if args.images:
        grid, lines = read_as_concept(pipe, args.folder, args.images, args.tries, args.exclude_concept_words)
        out = args.folder / FLOOR_DIR / f"{args.images}-read-as-concept.png"
        save_image(out, grid)
        print("\n".join([f"{out}: {len(lines)} images read as the concept (top: the original model)", *lines]))
        return
    tag = "-noconcept" if args.exclude_concept_words else ""
    jobs = [(row, None, f"{row}{tag}") for row in args.rows]
    jobs += [("original", value, f"original-as-{value}{tag}") for value in args.name_as]
    for row, name_as, stem in jobs:
        out = args.folder / FLOOR_DIR / f"{stem}.json"
        if out.is_file():
            got = json.loads(out.read_text())
            manifest = args.folder / "deltas" / row / "manifest.json"
            current = json.loads(manifest.read_text())["delta_id"] if manifest.is_file() else None
            if (got["tries"], got["repeats"], got["delta_id"]) == (args.tries, args.repeats, current):
                print(f"{stem}: stored ({got['won']} / {got['trials']})")
                continue
        try:
            got = measure(pipe, args.folder, row, args.tries, args.repeats, args.exclude_concept_words, name_as)
        except StaleDeltaError as error:
            print(f"{stem}: skipped, {error}")
            continue
        write_text(out, json.dumps(got, indent=1) + "\n")
        print(f"{stem}: random prefixes won {got['won']} / {got['trials']} (per image {got['image_hits']}/"
              f"{got['images']}); the attack won {got['attack_won']} / {got['cases']}")

if __name__ == "__main__":
    main()
