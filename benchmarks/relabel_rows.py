"""Give stored robustness rows another label, with every file that names them: for a row whose method preset changed.

    PYTHONPATH=src python benchmarks/relabel_rows.py --root benchmarks/results/robustness-harden \\
        --from trust --to trust-lr1e-3 --method trust --set lr=0.001 --set retain_preserve=false ...

A row labelled ``--from`` (and each hardened row built on it, ``<from>+adv`` ...) in any folder under
``--root`` is renamed to ``--to`` (``<to>+adv`` ...): its row file, its attack-seed records, attack
prompts, resurgence run, saved delta, screen and unnamed-prompt records.  ``--set`` records the
overrides that reproduce the row under the current preset as its ``method_overrides``, and a row
without ``erase_settings`` gets them, resolved from ``--method``'s current preset with those
overrides: what the row was measured with.  ``--drop-overrides`` instead removes a row's
``method_overrides``, for a setting that has become the preset; its recorded ``erase_settings`` must
then equal the preset's, or nothing is renamed.  Nothing is written when a new name is taken.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from erasekit.concepts.packs import get_concept
from erasekit.eval.robustness import erase_config, erase_settings
from erasekit.eval.robustness_table import folder_rows, stored_rows, unhardened_label
from erasekit.world.atomic import write_json

RECORD_DIRS = ("attack-seeds", "unnamed", "screens")  # files <label>[-<attack>-seed<k>].json with a "row" field


def relabels(folder: Path, old: str) -> dict[str, str]:
    """{label: new label suffix} of the rows in ``folder`` labelled ``old`` or hardened from it."""
    return {label: label[len(old):] for label in folder_rows(folder) if label == old or unhardened_label(label) == old}


def _moves(folder: Path, label: str, new: str) -> list[tuple[Path, Path]]:
    moves = [(folder / f"{label}.json", folder / f"{new}.json")]
    for sub in ("resurgence", "deltas"):
        if (folder / sub / label).is_dir():
            moves.append((folder / sub / label, folder / sub / new))
    for attack in ("unlearndiff", "ringabell"):
        if (folder / "attacks" / f"{label}-{attack}").is_dir():
            moves.append((folder / "attacks" / f"{label}-{attack}", folder / "attacks" / f"{new}-{attack}"))
    for sub in RECORD_DIRS:
        for path in sorted((folder / sub).glob(f"{label}*.json")):
            rest = path.stem[len(label):]
            if rest == "" or rest.startswith(("-unlearndiff-", "-ringabell-")):
                moves.append((path, path.with_name(f"{new}{rest}.json")))
    return moves


def relabel_folder(folder: Path, old: str, to: str, method: str, overrides: dict, drop: bool) -> list[str]:
    """Rename ``old``'s rows in ``folder``; returns what was done, one line each."""
    done, plan = [], []
    for label, suffix in sorted(relabels(folder, old).items()):
        row = json.loads((folder / f"{label}.json").read_text())
        kind = get_concept(row["concept"]).kind
        if drop:
            current = erase_settings(erase_config(method, row["seed"]), kind)
            if row.get("erase_settings") != current:
                raise SystemExit(f"{folder / label}.json: its erase_settings are not the current preset's; not renamed")
            row.pop("method_overrides", None)
        else:
            merged = {**overrides, **row.get("method_overrides", {})}
            row["method_overrides"] = merged
            row.setdefault("erase_settings", erase_settings(erase_config(method, row["seed"], merged), kind))
        plan.append((label, to + suffix, row))
    for label, new, _ in plan:
        for _, dst in _moves(folder, label, new):
            if dst.exists():
                raise SystemExit(f"{dst} exists; nothing renamed in {folder}")
    for label, new, row in plan:
        for src, dst in _moves(folder, label, new):
            src.rename(dst)
            if dst.suffix == ".json" and dst.parent != folder:
                record = json.loads(dst.read_text())
                if record.get("row") == label:
                    write_json(dst, {**record, "row": new})
        row["method"] = new
        write_json(folder / f"{new}.json", row)
        done.append(f"{folder}: {label} -> {new}")
    return done


def main() -> None:
    from run import overrides_of  # noqa: E402  (benchmarks/experiments)

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--from", dest="old", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--method", required=True, help="the registered method the rows erased with")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--drop-overrides", action="store_true")
    a = ap.parse_args()
    overrides = overrides_of(ap, a.set)
    for folder in stored_rows(a.root):
        for line in relabel_folder(folder, a.old, a.to, a.method, overrides, a.drop_overrides):
            print(line)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "experiments"))
    main()
