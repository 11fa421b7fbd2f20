"""Robustness tables: stored robustness rows read back and rendered with Wilson intervals and the bars.

`summary` renders every row stored under a folder (``<concept>[/<seed dir>]/<row>.json``, as
`erasekit.eval.robustness` writes them): plain rate, each attack's rate (pooled over the attack seeds a
row was attacked with), resurgence, preservation against the original model and against the unhardened
erasure, costs, and whether a hardened row meets the bars (<= 0.05 under each attack and after
resurgence, preservation >= 0.95 of the original's, plain rate no worse than without hardening).
`markdown` is one folder's table as `benchmarks/robustness.py` prints it. Where the attack's floor was
measured for a row (``<folder>/attack-floor/<row>.json``, `benchmarks/attack_floor.py`: random prefixes
judged as the attack judges, concept words allowed) on the delta the row measured, `summary` shows it
beside the attack's rate.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..methods.harden import VARIANTS
from .attack_seeds import attack_text, pooled_row
from .attacks.run import attack_title
from .metrics import wilson_interval
from .robustness_bars import BAR_PRESERVATION, BAR_RATE, bars, rate_with_interval, train_loss
from .tasks import value_task

UDA, RAB = attack_title("unlearndiff"), attack_title("ringabell")  # the attacks' names in table headers

def overrides_text(overrides: dict | list[dict] | None) -> str:
    """``k=v, ...``; a list (one dict per chain step) joins the steps' texts with ``; ``, an empty step as ``-``."""
    if isinstance(overrides, list):
        return "; ".join(overrides_text(o) or "-" for o in overrides)
    return ", ".join(f"{k}={v if not isinstance(v, list) or len(v) <= 4 else f'[{len(v)} items: {v[0]!r}, ...]'}"
                     for k, v in (overrides or {}).items())  # a long list (extra_targets) by its length


def _preservation(row: dict, original: dict | None) -> str:
    value, _ = preservation_text(row, original)
    return "-" if value is None else f"{value:.2f}"


FLOOR_DIR = "attack-floor"  # per folder: the attack floor of each row, ``<row>.json``


def stored_floor(folder: Path, row: dict) -> dict | None:
    """The attack floor stored for ``row`` in ``folder`` (random prefixes, concept words allowed, the case
    prompts as written), or None where none was measured on the delta the row measured."""
    path = folder / FLOOR_DIR / f"{row['method']}.json"
    if not path.is_file():
        return None
    got = json.loads(path.read_text())
    if got.get("named_as") or got.get("exclude_concept_words") or got.get("delta_id") != row.get("delta_id"):
        return None
    return got


def floor_text(folder: Path, row: dict) -> str:
    """``won / trials = rate [95% Wilson]`` of the row's stored attack floor, or "-"."""
    got = stored_floor(folder, row)
    if got is None:
        return "-"
    lo, hi = wilson_interval(got["won"], got["trials"])
    return f"{got['won']} / {got['trials']} = {got['won'] / got['trials']:.2f} [{lo:.2f}, {hi:.2f}]"


STORED_N_PRESERVE = 48  # preservation prompts of the rows stored before rows recorded ``n_preserve``


def preservation_interval(row: dict, original: dict) -> tuple[float, float, float]:
    """Preservation of ``row`` against ``original``: its adherence / the original's, and the 95% Wilson
    interval of its adherent count over its preservation prompts divided by the original's adherence
    (the original's reading is the fixed reference; its own spread is not included)."""
    n = row.get("n_preserve", STORED_N_PRESERVE)
    lo, hi = wilson_interval(round(row["adherence"] * n), n)
    ref = original["adherence"]
    return row["adherence"] / ref, lo / ref, hi / ref


def attribute_preservation_text(row: dict, original: dict | None) -> str:
    """Preservation counted on the attribute the concept belongs to (shape for a shape, colour for a colour:
    what the concept's BENCHMARKS scenario checks), with its interval, or "-" where the rows lack it."""
    if original is None or "adherence_by_attribute" not in row or "adherence_by_attribute" not in original:
        return "-"
    attribute = next(iter(value_task(row["concept"]).targets[0]))
    mine, ref = row["adherence_by_attribute"][attribute], original["adherence_by_attribute"][attribute]
    value, lo, hi = preservation_interval({**row, "adherence": mine}, {"adherence": ref})
    return f"{attribute}: {value:.2f} [{lo:.2f}, {hi:.2f}]"


def preservation_text(row: dict, original: dict | None) -> tuple[float | None, str]:
    """(preservation, its text with the interval) of ``row``, or (None, "-") without an original reading."""
    if original is None or "adherence" not in row or "adherence" not in original:
        return None, "-"
    value, lo, hi = preservation_interval(row, original)
    return value, f"{value:.2f} [{lo:.2f}, {hi:.2f}]"


def cost(row: dict, stage: str) -> str:
    if f"{stage}_seconds" not in row:
        return "-"
    its = row.get(f"{stage}_iterations")
    return f"{row[f'{stage}_seconds']:.1f}" + (f" ({its})" if its is not None else "")


def markdown(rows: list[dict], concept: str, n_cases: int, steps: int) -> str:
    original = next((r for r in rows if r["method"] == "original"), None)
    lines = [f"Target rate for `{concept}` on the Shapes model ({n_cases} explicit cases, fixed seeds): "
             f"plain prompts, prompts found by each attack, and after {steps} resurgence fine-tuning steps "
             "(mean over explicit/synonym/implicit tiers); tiers: explicit/synonym/implicit probe prompts; "
             "preservation: other values' adherence relative to the original model's.", "",
             f"| method | tiers | preservation | plain | {RAB} | {UDA} | resurgence (before -> after) "
             "| erase s (iterations) | harden s (iterations) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = f"{r['resurgence_before']:.2f} -> {r['resurgence']:.2f}" if "resurgence" in r else "-"
        erase_s = cost(r, "erase")
        harden_s = cost(r, "harden")
        tiers = "/".join(f"{v:.2f}" for v in r["tiers"].values()) if "tiers" in r else "-"
        lines.append(f"| {r['method']} | {tiers} | {_preservation(r, original)} | {r['plain']:.2f} | {r['ringabell']:.2f} "
                     f"| {r['unlearndiff']:.2f} | {res} | {erase_s} | {harden_s} |")
    return "\n".join(lines) + "\n"


def _row(path: Path) -> dict | None:
    """The robustness row stored in ``path``, or None for any other JSON file."""
    row = json.loads(path.read_text())
    return row if isinstance(row, dict) and "method" in row and "unlearndiff" in row else None


def folder_rows(folder: Path) -> dict[str, dict]:
    """The rows stored directly in ``folder``, keyed by row label."""
    return {row["method"]: row for path in sorted(folder.glob("*.json")) if (row := _row(path)) is not None}


def screen_rows(folder: Path) -> dict[str, dict]:
    """The screen rows of ``folder`` (``folder/screens/*.json``: tiers and preservation only), keyed by row label."""
    rows = (json.loads(p.read_text()) for p in sorted((folder / "screens").glob("*.json")))
    return {row["method"]: row for row in rows if isinstance(row, dict) and row.get("screen")}


def stored_rows(root: Path) -> dict[Path, dict[str, dict]]:
    """Every row under ``root/<concept>[/<seed dir>]/*.json``, grouped by folder and keyed by row label."""
    groups: dict[Path, dict[str, dict]] = {}
    for path in sorted(root.glob("*/**/*.json")):
        if path.parent.name in ("attacks", "resurgence", "deltas") or "deltas" in path.parts:
            continue
        if (row := _row(path)) is not None:
            groups.setdefault(path.parent, {})[row["method"]] = row
    return groups


def summary(root: Path, only: set[str] | None = None) -> str:
    """Markdown table of every row under ``root`` (or only the rows labelled in ``only``, and the
    originals): rates with 95% Wilson intervals, hardened rows beside their unhardened ones, and
    whether each hardened row meets the bars."""
    groups = stored_rows(root)
    if only is not None:
        groups = {folder: {k: r for k, r in rows.items() if k in only or k == "original"} for folder, rows in groups.items()}
    lines = ["Shapes world, per concept and seed folder: target rate [95% Wilson interval] of the plain case prompts, "
             "under each attack (its own seed and budget, independent of the hardening's training attack; where a row was "
             "attacked with several attack seeds, the rate pooled over them, over cases x seeds, and the cases won "
             "under each seed); random-prefix floor = cases won by the plain prompt or by any of a few random prefixes of "
             "the attack's length and vocabulary, judged as the attack judges, pooled over several draws (cases x draws; "
             "`benchmarks/attack_floor.py`, whose page gives the numbers of prefixes and draws; a dash: not measured on "
             "this row's delta); and after "
             "40 benign fine-tuning steps (resurgence, mean of the wording tiers); preservation = other values' "
             "adherence / the original's [95% Wilson interval of the adherent count, over the original's adherence] "
             "(/ the unhardened erasure's); seconds (iterations) of the base erasure and of the hardening; train "
             "attack = the adv hardening's own attack loss, first -> last step, mean of its last 10 rounds. "
             f"bars: {UDA} <= {BAR_RATE}, {RAB} <= {BAR_RATE}, resurgence <= {BAR_RATE}, "
             f"preservation >= {BAR_PRESERVATION}, plain no worse than unhardened.", "",
             f"| run | method | plain | {UDA} | random-prefix floor | {RAB} | resurgence | preservation (vs unhardened) | erase s (it) "
             "| harden s (it) | train attack | bars UDA/RaB/res/pres/plain |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for folder, rows in groups.items():
        if only is not None and set(rows) <= {"original"} and folder.parent in groups:
            continue  # a seed folder without the asked rows
        original = rows.get("original") or groups.get(folder.parent, {}).get("original")
        for name, r in sorted(rows.items(), key=lambda kv: (kv[0] != "original", unhardened_label(kv[0]) or kv[0], kv[0])):
            n = r["n_cases"]
            r = pooled_row(folder, r)
            pres, pres_text = preservation_text(r, original)
            unhardened = unhardened_label(name)
            hardened = unhardened is not None
            base = rows.get(unhardened) if hardened else None  # the unhardened erasure
            train = r.get("train_attack")
            own = f" ({r['adherence'] / base['adherence']:.2f})" if base and "adherence" in base else ""
            shown = name + (f" ({overrides_text(r['harden_overrides'])})" if r.get("harden_overrides") else "")
            resurgence = rate_with_interval(r["resurgence"], 3 * 16) if "resurgence" in r else "-"
            lines.append(
                f"| {folder.relative_to(root)} | {shown} | {rate_with_interval(r['plain'], n)} | {attack_text(r, 'unlearndiff')} "
                f"| {floor_text(folder, r)} | {attack_text(r, 'ringabell')} | {resurgence} "
                f"| {pres_text}{own} | {cost(r, 'erase')} | {cost(r, 'harden')} "
                f"| {train_loss(train)} "
                f"| {bars(r, base['plain'] if base else None, pres) if hardened else '-'} |")
    return "\n".join(lines) + "\n"


def unhardened_label(label: str) -> str | None:
    """The unhardened erasure's label of a hardened row (``kscu+adv-g1`` -> ``kscu``, ``salun+++adv`` ->
    ``salun++``, ``trce+adv+rece`` -> ``trce``), None for an unhardened one (``salun++``, ``trce-t``, ``original``)."""
    for k in range(1, len(label)):
        if label[k] == "+" and label[k + 1:].startswith(tuple(VARIANTS)):
            return label[:k]
    return None
